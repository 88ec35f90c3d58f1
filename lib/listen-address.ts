// Where a server listens, from an `address:port` (`[v6]:port`) or from a port on the node's own
// IP: the DaemonSet gives the node-runner its port and the downward API its node's IP, so that
// an IPv6 node is never written as `fd00::1:19443` (which no parser can split).

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

/** `host:port` or `[v6]:port` → its parts; undefined when it is neither. */
export function parseListenAddress(text: string): ListenAddress | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text);
  const port = parsePort(m?.[3] ?? "");
  if (m === null || port === undefined) return undefined;
  return { host: m[1] ?? m[2] ?? "", port };
}

export function parsePort(text: string): number | undefined {
  const port = Number(text);
  return /^\d{1,5}$/.test(text) && port >= 1 && port <= 65535 ? port : undefined;
}

/** `host:port`, with brackets around an IPv6 host: what an HTTP authority and a listen flag look like. */
export function formatHostPort(host: string, port: number | string): string {
  return `${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/**
 * The address to listen on: `address` when given (`host:port`), else `port` on the first of
 * `hostIPs`, else `fallback`. A description of what is wrong when neither parses.
 */
export function resolveListenAddress(options: {
  readonly address?: string | undefined;
  readonly port?: string | undefined;
  readonly hostIPs: readonly string[];
  readonly fallback: ListenAddress;
}): ListenAddress | { readonly error: string } {
  if (options.address !== undefined) {
    return (
      parseListenAddress(options.address) ?? { error: `must be address:port ([address]:port for IPv6), got ${JSON.stringify(options.address.slice(0, 100))}` }
    );
  }
  if (options.port !== undefined) {
    const port = parsePort(options.port);
    if (port === undefined) return { error: `a port must be 1 to 65535, got ${JSON.stringify(options.port.slice(0, 100))}` };
    const host = options.hostIPs[0];
    if (host === undefined) return { error: "a port alone needs the node's IP (--host-ip, HOST_IP from status.hostIP) to listen on" };
    return { host, port };
  }
  return options.fallback;
}
