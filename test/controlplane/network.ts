// The cluster's network on one machine (IPv4, dual-stack or IPv6-only), made only of network namespaces: a "fabric" namespace
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

/** The cluster's IP families: IPv4 only, dual-stack (IPv4 first), or IPv6 only. */
export type IpFamily = "ipv4" | "dual" | "ipv6";

/** One family's plan: the fabric's subnet (.1 / ::1 is the fabric, the API server's address; nodes from 11), pods, Services. */
interface FamilyPlan {
  readonly fabricAddress: string;
  readonly fabricPrefix: number;
  readonly nodeIp: (index: number) => string;
  readonly podSubnet: (index: number) => string;
  readonly podGateway: (index: number) => string;
  readonly clusterPodCidr: string;
  readonly serviceCidr: string;
  /** The `kubernetes` Service's address (the first of the range) and the DNS Service's. */
  readonly apiServiceIp: string;
  readonly dnsServiceIp: string;
  readonly defaultRoute: string;
}
const V4: FamilyPlan = {
  fabricAddress: "10.90.0.1",
  fabricPrefix: 24,
  nodeIp: (i) => `10.90.0.${10 + i}`,
  podSubnet: (i) => `10.244.${i}.0/24`,
  podGateway: (i) => `10.244.${i}.1`,
  clusterPodCidr: "10.244.0.0/16",
  serviceCidr: "10.96.0.0/16",
  apiServiceIp: "10.96.0.1",
  dnsServiceIp: "10.96.0.10",
  defaultRoute: "0.0.0.0/0",
};
const V6: FamilyPlan = {
  fabricAddress: "fd00:90::1",
  fabricPrefix: 64,
  nodeIp: (i) => `fd00:90::${10 + i}`,
  podSubnet: (i) => `fd00:244:${i}::/64`,
  podGateway: (i) => `fd00:244:${i}::1`,
  clusterPodCidr: "fd00:244::/48",
  serviceCidr: "fd00:96::/112",
  apiServiceIp: "fd00:96::1",
  dnsServiceIp: "fd00:96::a",
  defaultRoute: "::/0",
};
/** The plans of a cluster's families, the primary first. */
function familyPlans(family: IpFamily): readonly FamilyPlan[] {
  return family === "ipv4" ? [V4] : family === "ipv6" ? [V6] : [V4, V6];
}

export interface NodeNetwork {
  readonly index: number;
  /** The node's network namespace (under /run/netns). */
  readonly netns: string;
  /** Its primary address (its family's first), and all of them. */
  readonly ip: string;
  readonly ips: readonly string[];
  /** Its pod subnets and the pod bridge's addresses in them (the pods' gateways), one per family. */
  readonly podSubnets: readonly string[];
  readonly podGateways: readonly string[];
  readonly defaultRoutes: readonly string[];
}

export interface ClusterNetwork {
  readonly family: IpFamily;
  readonly fabricNetns: string;
  /** The fabric's addresses, the primary first: the API server listens on the first. */
  readonly fabricAddresses: readonly string[];
  readonly clusterPodCidrs: readonly string[];
  readonly serviceCidrs: readonly string[];
  readonly apiServiceIps: readonly string[];
  /** The DNS Service's address (the primary family's). */
  readonly dnsServiceIp: string;
  readonly nodes: readonly NodeNetwork[];
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

export function createClusterNetwork(nodeCount: number, family: IpFamily = "ipv4"): ClusterNetwork {
  reapStaleNetworks();
  const plans = familyPlans(family);
  const run = `${PREFIX}${process.pid}`;
  const fabricNetns = `${run}-fabric`;
  const made: string[] = [];
  const remove = (): void => {
    for (const netns of [...made].reverse()) spawnSync("ip", ["netns", "del", netns]);
    made.length = 0;
  };
  /** A namespace's forwarding on, and IPv6 addresses usable at once (no duplicate detection on a private bridge). */
  const prepare = (netns: string): void => {
    ip(["-n", netns, "link", "set", "lo", "up"]);
    netnsSysctl(netns, "net/ipv4/ip_forward", "1");
    netnsSysctl(netns, "net/ipv6/conf/all/forwarding", "1");
    netnsSysctl(netns, "net/ipv6/conf/default/accept_dad", "0");
    netnsSysctl(netns, "net/ipv6/conf/all/accept_dad", "0");
  };
  try {
    ip(["netns", "add", fabricNetns]);
    made.push(fabricNetns);
    prepare(fabricNetns);
    ip(["-n", fabricNetns, "link", "add", "fabric0", "type", "bridge"]);
    for (const plan of plans) ip(["-n", fabricNetns, "addr", "add", `${plan.fabricAddress}/${plan.fabricPrefix}`, "dev", "fabric0"]);
    ip(["-n", fabricNetns, "link", "set", "fabric0", "up"]);

    const nodes: NodeNetwork[] = [];
    for (let index = 1; index <= nodeCount; index++) {
      const netns = `${run}-n${index}`;
      ip(["netns", "add", netns]);
      made.push(netns);
      prepare(netns);
      // The veth is made in the node's namespace; its peer is moved to the fabric's bridge.
      ip(["-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", `node${index}`, "netns", fabricNetns]);
      ip(["-n", fabricNetns, "link", "set", `node${index}`, "master", "fabric0", "up"]);
      ip(["-n", netns, "link", "set", "eth0", "up"]);
      for (const plan of plans) {
        ip(["-n", netns, "addr", "add", `${plan.nodeIp(index)}/${plan.fabricPrefix}`, "dev", "eth0"]);
        ip(["-n", netns, "route", "add", "default", "via", plan.fabricAddress]);
        ip(["-n", fabricNetns, "route", "add", plan.podSubnet(index), "via", plan.nodeIp(index)]);
      }
      nodes.push({
        index,
        netns,
        ip: plans[0]?.nodeIp(index) ?? "",
        ips: plans.map((p) => p.nodeIp(index)),
        podSubnets: plans.map((p) => p.podSubnet(index)),
        podGateways: plans.map((p) => p.podGateway(index)),
        defaultRoutes: plans.map((p) => p.defaultRoute),
      });
    }
    return {
      family,
      fabricNetns,
      fabricAddresses: plans.map((p) => p.fabricAddress),
      clusterPodCidrs: plans.map((p) => p.clusterPodCidr),
      serviceCidrs: plans.map((p) => p.serviceCidr),
      apiServiceIps: plans.map((p) => p.apiServiceIp),
      dnsServiceIp: plans[0]?.dnsServiceIp ?? "",
      nodes,
      remove,
    };
  } catch (err) {
    remove();
    throw err;
  }
}
