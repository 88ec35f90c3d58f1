# Images of this project, one build stage shared by three targets:
#   docker build --target node-runner -t podnet/node-runner .
#   docker build --target waiter      -t podnet/waiter .        (`pnc wait`: one bundled file, no node_modules)
#   docker build --target decision    -t podnet/decision .
# The base is pinned by its multi-architecture index digest. The tests build these same targets
# with buildah on a locally produced base (test/controlplane/images.sh passes NODE_IMAGE).
ARG NODE_IMAGE=node:22.20.0-bookworm-slim@sha256:b21fe589dfbe5cc39365d0544b9be3f1f33f55f3c86c87a76ff65a02f8f5848e

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY contract contract
COPY node-runner node-runner
COPY functions functions
COPY cli cli
COPY waiter waiter
# Compiled JavaScript for the node-runner and the function (tsx is a dev dependency only); the
# CLI bundled for the waiter image (`pnc wait` loads its own 13 KB of it, not the other
# commands); then the dev dependencies go.
RUN npm run build \
 && npm run build:waiter \
 && npm prune --omit=dev

FROM ${NODE_IMAGE} AS runtime
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules node_modules
COPY --from=build /src/dist dist
ENV NODE_ENV=production

# The node-runner: iptables (legacy and nft variants), nft, ip and nsenter, run inside pods'
# network namespaces. The DaemonSet runs `node dist/node-runner/main.js` (root, four capabilities)
# with V8 limits suited to a small agent.
FROM runtime AS node-runner
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables iproute2 util-linux \
 && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["node", "dist/cli/pnc.js"]

# The waiter init container: Node and one bundled file, as the proxy's UID (the template sets it
# too). Every mesh pod pulls it; apart from the shared base its layer is about a megabyte.
FROM ${NODE_IMAGE} AS waiter
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/bundle/dist dist
ENV NODE_ENV=production
USER 1337:1337
ENTRYPOINT ["node", "dist/cli/pnc.js", "wait"]

# The decision function (a Knative Service): non-root; run it with a read-only root filesystem.
FROM runtime AS decision
USER 65532:65532
ENTRYPOINT ["node", "dist/functions/main.js"]
