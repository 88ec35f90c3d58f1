// The cluster's network on one machine, made only of network namespaces: a "fabric" namespace
// with a bridge (the switch the nodes plug into, and where the control plane runs), and one
// namespace per node, its eth0 a veth on that bridge. Each node routes its own pod subnet; the
// fabric routes every node's pod subnet to that node. The host's own namespace gets no address,
// route or rule: the tests reach the API server (and anything else in the fabric) through
// relays over unix sockets (relay.mjs). The fabric has no way out: nothing leaves the machine.
//
// Names carry the creating process's pid, so that a later run removes what a killed run left
// (reapStaleNetworks).
import { spawnSync } from "node:child_process";
import { pidAlive } from "./harness.ts";

const PREFIX = "pncc-";
/** The fabric's subnet: .1 is the fabric itself (the API server's address), nodes from .11. */
export const FABRIC_SUBNET = "10.90.0";
export const FABRIC_ADDRESS = `${FABRIC_SUBNET}.1`;
/** Pods of node i (1-based) get 10.244.i.0/24; the cluster's pod CIDR covers them all. */
export const CLUSTER_POD_CIDR = "10.244.0.0/16";
export const SERVICE_CIDR = "10.96.0.0/16";

export interface NodeNetwork {
  readonly index: number;
  /** The node's network namespace (under /run/netns). */
  readonly netns: string;
  readonly ip: string;
  readonly podSubnet: string;
  /** The pod bridge's address: the pods' gateway, first of the pod subnet. */
  readonly podGateway: string;
}

export interface ClusterNetwork {
  readonly fabricNetns: string;
  readonly nodes: readonly NodeNetwork[];
  /** argv that runs `command` in a network namespace (nsenter: the mount namespace stays the host's). */
  inNetns(netns: string, command: string, args: readonly string[]): { command: string; args: string[] };
  remove(): void;
}

function ip(args: string[]): void {
  const r = spawnSync("ip", args, { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`ip ${args.join(" ")}: ${r.stderr.trim() || `exit ${r.status ?? "?"}`}`);
}

/** A sysctl of a namespace (/proc/sys/net is per network namespace). */
function netnsSysctl(netns: string, key: string, value: string): void {
  const r = spawnSync("nsenter", [`--net=/run/netns/${netns}`, "sh", "-c", `echo ${value} > /proc/sys/${key}`], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`sysctl ${key}=${value} in ${netns}: ${r.stderr.trim()}`);
}

function netnsNames(): string[] {
  const r = spawnSync("ip", ["netns", "list"], { encoding: "utf8" });
  return r.stdout
    .split("\n")
    .map((l) => l.split(" ")[0] ?? "")
    .filter((n) => n.startsWith(PREFIX));
}

/** Delete the namespaces of runs whose process is gone (their veths go with them). */
export function reapStaleNetworks(): number {
  let reaped = 0;
  for (const name of netnsNames()) {
    const pid = /^pncc-(\d+)-/.exec(name)?.[1];
    if (pid !== undefined && pidAlive(Number(pid))) continue;
    spawnSync("ip", ["netns", "del", name]);
    reaped++;
  }
  return reaped;
}

export function createClusterNetwork(nodeCount: number): ClusterNetwork {
  reapStaleNetworks();
  const run = `${PREFIX}${process.pid}`;
  const fabricNetns = `${run}-fabric`;
  const made: string[] = [];
  const remove = (): void => {
    for (const netns of [...made].reverse()) spawnSync("ip", ["netns", "del", netns]);
    made.length = 0;
  };
  try {
    ip(["netns", "add", fabricNetns]);
    made.push(fabricNetns);
    ip(["-n", fabricNetns, "link", "set", "lo", "up"]);
    ip(["-n", fabricNetns, "link", "add", "fabric0", "type", "bridge"]);
    ip(["-n", fabricNetns, "addr", "add", `${FABRIC_ADDRESS}/24`, "dev", "fabric0"]);
    ip(["-n", fabricNetns, "link", "set", "fabric0", "up"]);
    netnsSysctl(fabricNetns, "net/ipv4/ip_forward", "1");

    const nodes: NodeNetwork[] = [];
    for (let index = 1; index <= nodeCount; index++) {
      const netns = `${run}-n${index}`;
      const nodeIp = `${FABRIC_SUBNET}.${10 + index}`;
      const podSubnet = `10.244.${index}.0/24`;
      ip(["netns", "add", netns]);
      made.push(netns);
      ip(["-n", netns, "link", "set", "lo", "up"]);
      // The veth is made in the node's namespace; its peer is moved to the fabric's bridge.
      ip(["-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", `node${index}`, "netns", fabricNetns]);
      ip(["-n", fabricNetns, "link", "set", `node${index}`, "master", "fabric0", "up"]);
      ip(["-n", netns, "addr", "add", `${nodeIp}/24`, "dev", "eth0"]);
      ip(["-n", netns, "link", "set", "eth0", "up"]);
      ip(["-n", netns, "route", "add", "default", "via", FABRIC_ADDRESS]);
      ip(["-n", fabricNetns, "route", "add", podSubnet, "via", nodeIp]);
      netnsSysctl(netns, "net/ipv4/ip_forward", "1");
      nodes.push({ index, netns, ip: nodeIp, podSubnet, podGateway: `10.244.${index}.1` });
    }
    return {
      fabricNetns,
      nodes,
      inNetns: (netns, command, args) => ({ command: "nsenter", args: [`--net=/run/netns/${netns}`, "--", command, ...args] }),
      remove,
    };
  } catch (err) {
    remove();
    throw err;
  }
}
