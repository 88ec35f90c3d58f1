# Images of this project, one build stage shared by three targets:
#   docker build --target node-runner -t podnet/node-runner .
#   docker build --target waiter      -t podnet/waiter .        (one static Go binary, from scratch)
#   docker build --target decision    -t podnet/decision .
# The bases are pinned by their multi-architecture index digests. The tests build these same
# targets with buildah on locally produced bases (test/controlplane/images.sh passes NODE_IMAGE
# and GO_IMAGE).
ARG NODE_IMAGE=node:22.20.0-bookworm-slim@sha256:b21fe589dfbe5cc39365d0544b9be3f1f33f55f3c86c87a76ff65a02f8f5848e
ARG GO_IMAGE=golang:1.25.5@sha256:6396b3d8039d2050ab7a3c5c6e1cbeed8bf6d2ddc0403e1ab39d78749227ca19

# The project's two Go programs (standard library only, static): the waiter and the
# node-runner's command helper.
FROM ${GO_IMAGE} AS go-build
WORKDIR /src
COPY waiter/go.mod waiter/*.go waiter/
COPY node-runner/netns-exec/go.mod node-runner/netns-exec/*.go node-runner/netns-exec/
RUN rm -f waiter/*_test.go node-runner/netns-exec/*_test.go \
 && cd /src/waiter && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags="-s -w" -o /out/podnet-wait . \
 && cd /src/node-runner/netns-exec && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags="-s -w" -o /out/podnet-netns-exec .

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts/build.ts scripts/
COPY contract contract
COPY lib lib
COPY node-runner node-runner
COPY functions functions
COPY cli cli
# One ES module per program with its npm dependencies bundled in (scripts/build.ts), and the
# licences of what was bundled: the images carry no node_modules.
RUN npm run build

FROM ${NODE_IMAGE} AS runtime
WORKDIR /app
# package.json says the bundles are ES modules ("type": "module").
COPY --from=build /src/package.json ./
COPY --from=build /src/dist dist
ENV NODE_ENV=production

# The node-runner: iptables (legacy and nft variants), nft and ip, run inside pods' network
# namespaces by its command helper (podnet-netns-exec, on PATH); openssl for `pnc keys`. The
# DaemonSet runs `node dist/node-runner/main.js` (root, four capabilities) with V8 limits suited
# to a small agent.
FROM runtime AS node-runner
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables iproute2 util-linux openssl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=go-build /out/podnet-netns-exec /usr/local/bin/podnet-netns-exec
ENTRYPOINT ["node", "dist/cli/pnc.js"]

# The waiter init container: every mesh pod pulls it, so it is one static binary (waiter/, Go
# standard library only) and nothing else: no shell, no libc, about 2.6 MB. UID of the proxy.
FROM scratch AS waiter
COPY --from=go-build /out/podnet-wait /podnet-wait
USER 1337:1337
ENTRYPOINT ["/podnet-wait"]

# The decision function (a Knative Service): non-root; run it with a read-only root filesystem.
FROM runtime AS decision
USER 65532:65532
ENTRYPOINT ["node", "dist/functions/main.js"]
