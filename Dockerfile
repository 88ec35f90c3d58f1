# Images of this project, one build stage shared by three targets:
#   docker build --target node-runner -t podnet/node-runner .
#   docker build --target waiter      -t podnet/waiter .        (`pnc wait`, no system tools)
#   docker build --target decision    -t podnet/decision .
# Pin the base images by digest in your registry mirror; tags are given for readability.
FROM node:22.20.0-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY contract contract
COPY node-runner node-runner
COPY functions functions
COPY cli cli
COPY waiter waiter
RUN npm run build && npm prune --omit=dev

FROM node:22.20.0-bookworm-slim AS runtime
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules node_modules
COPY --from=build /src/dist dist
ENV NODE_ENV=production

# The node-runner: iptables (legacy and nft variants), nft, ip and nsenter, run inside pods'
# network namespaces. `pnc` is the entry point: the injection template runs `pnc wait` as the
# proxy's UID; the DaemonSet runs `node dist/node-runner/main.js` (root, four capabilities).
FROM runtime AS node-runner
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables iproute2 util-linux \
 && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["node", "dist/cli/pnc.js"]

# The waiter init container: the runtime alone, as the proxy's UID (the template sets it too).
FROM runtime AS waiter
USER 1337:1337
ENTRYPOINT ["node", "dist/cli/pnc.js", "wait"]

# The decision function (a Knative Service): non-root; run it with a read-only root filesystem.
FROM runtime AS decision
USER 65532:65532
ENTRYPOINT ["node", "dist/functions/main.js"]
