// Validators for the single values that end up inside a firewall rule.
//
// Every token that the rule renderers emit comes through one of these functions. Each accepts
// only a narrow, explicit alphabet: no whitespace, no control characters, nothing an
// iptables/nft/shell parser could read as an option, negation, wildcard or separator.
import ipaddr from "ipaddr.js";

/** Why a token was refused, in words an operator can act on. */
export type TokenCheck = { ok: true; value: string } | { ok: false; reason: string };

const ok = (value: string): TokenCheck => ({ ok: true, value });
const bad = (reason: string): TokenCheck => ({ ok: false, reason });

const DECIMAL = /^(0|[1-9][0-9]*)$/;

function decimalInRange(text: string, min: number, max: number, what: string): TokenCheck {
  if (!DECIMAL.test(text) || text.length > 10) {
    return bad(`${what} must be a decimal number without sign or leading zeros`);
  }
  const n = Number(text);
  if (n < min || n > max) return bad(`${what} must be between ${min} and ${max}`);
  return ok(text);
}

/** A TCP/UDP port number as it appears in a port list (0–65535). */
export function checkPort(text: string): TokenCheck {
  return decimalInRange(text, 0, 65535, "a port");
}

/** A port the proxy itself listens on: 0 would mean "any", which is never meant. */
export function checkListenPort(text: string): TokenCheck {
  return decimalInRange(text, 1, 65535, "a listen port");
}

/** Numeric UID or GID. 4294967295 is (uid_t)-1, "no user", and is refused. */
export function checkNumericId(text: string): TokenCheck {
  return decimalInRange(text, 0, 4294967294, "a UID/GID");
}

/** A packet mark (32-bit, decimal). */
export function checkMark(text: string): TokenCheck {
  return decimalInRange(text, 1, 4294967295, "a packet mark");
}

/** A policy-routing table id. 253–255 are the kernel's default, main and local tables. */
export function checkRouteTable(text: string): TokenCheck {
  const c = decimalInRange(text, 1, 4294967295, "a routing table id");
  if (c.ok && ["253", "254", "255"].includes(text)) {
    return bad("routing tables 253 (default), 254 (main) and 255 (local) are reserved");
  }
  return c;
}

/**
 * A group for owner-group matching: a numeric GID or a POSIX-style group name. Names are
 * resolved by iptables/nft on the node, not inside the pod's image.
 */
export function checkGroup(text: string): TokenCheck {
  if (DECIMAL.test(text)) return checkNumericId(text);
  if (/^[A-Za-z_][A-Za-z0-9_-]{0,31}$/.test(text)) return ok(text);
  return bad("a group must be a numeric GID or a name of letters, digits, '_' and '-' (at most 32, not starting with a digit or '-')");
}

/**
 * A Linux interface name. The kernel allows almost any byte in 15 characters; we allow the
 * names real interfaces use and nothing that iptables treats specially ('+' wildcard, '!'
 * negation, a leading '-' read as an option).
 */
export function checkInterfaceName(text: string): TokenCheck {
  if (text.length === 0 || text.length > 15) {
    return bad("an interface name must have 1 to 15 characters");
  }
  // Istio's rule (pkg/util/net.ValidateInterfaceNames): a letter first.
  if (!/^[A-Za-z][A-Za-z0-9_.-]*$/.test(text)) {
    return bad("an interface name may only contain letters, digits, '_', '.', '-' and must start with a letter");
  }
  return ok(text);
}

const IPV4 = /^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$/;
const IPV6_CHARS = /^[0-9A-Fa-f:.]+$/;

export type IpFamily = 4 | 6;

/** A bare IPv4 address in dotted-decimal form (no leading zeros, as Go's netip requires). */
export function checkIPv4(text: string): TokenCheck {
  return IPV4.test(text) ? ok(text) : bad("not an IPv4 address in dotted-decimal form");
}

/** A bare IPv6 address (zones such as %eth0 are refused). */
export function checkIPv6(text: string): TokenCheck {
  if (!IPV6_CHARS.test(text) || !text.includes(":") || !ipaddr.IPv6.isValid(text)) {
    return bad("not an IPv6 address");
  }
  return ok(text);
}

export interface Cidr {
  /** Text as Istio prints it (Go netip.Prefix.String()): IPv6 in RFC 5952 form. */
  readonly text: string;
  readonly family: IpFamily;
  /** The address is a loopback address (127/8 or ::1). */
  readonly loopback: boolean;
}

/**
 * Parse an IPv6 address. ipaddr.js reads any dotted tail as an IPv4-mapped address
 * ("::1.2.3.4" becomes ::ffff:1.2.3.4); Go keeps the tail's bits where they are
 * (::102:304), so the tail is turned into two hex groups first.
 */
function parseIPv6(text: string): ipaddr.IPv6 {
  const tail = /^(.*:)(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (tail === null) return ipaddr.IPv6.parse(text);
  const [a, b, c, d] = tail.slice(2).map(Number) as [number, number, number, number];
  const hex = (hi: number, lo: number) => ((hi << 8) | lo).toString(16);
  return ipaddr.IPv6.parse(`${tail[1]}${hex(a, b)}:${hex(c, d)}`);
}

function formatIPv6(address: ipaddr.IPv6): string {
  // Go prints IPv4-mapped addresses with a dotted tail; ipaddr.js would print hex groups.
  if (address.isIPv4MappedAddress()) return `::ffff:${address.toIPv4Address().toString()}`;
  return address.toRFC5952String();
}

/** An address with a prefix length, e.g. 10.0.0.0/8 or 2001:db8::/32. */
export function checkCidr(text: string): { ok: true; value: Cidr } | { ok: false; reason: string } {
  const slash = text.indexOf("/");
  if (slash < 0) return { ok: false, reason: "a CIDR needs a prefix length, e.g. 10.0.0.0/8" };
  const addr = text.slice(0, slash);
  const bits = text.slice(slash + 1);
  if (IPV4.test(addr)) {
    const len = decimalInRange(bits, 0, 32, "an IPv4 prefix length");
    if (!len.ok) return len;
    const a = ipaddr.IPv4.parse(addr);
    return { ok: true, value: { text, family: 4, loopback: a.range() === "loopback" } };
  }
  if (checkIPv6(addr).ok) {
    const len = decimalInRange(bits, 0, 128, "an IPv6 prefix length");
    if (!len.ok) return len;
    const a = parseIPv6(addr);
    // Go's netip unwraps an IPv4-mapped address before asking whether it is loopback, so
    // ::ffff:127.0.0.1 counts as loopback for Istio (it stays an IPv6 range all the same).
    const loopback = a.isIPv4MappedAddress() ? a.toIPv4Address().range() === "loopback" : a.range() === "loopback";
    return { ok: true, value: { text: `${formatIPv6(a)}/${bits}`, family: 6, loopback } };
  }
  return { ok: false, reason: "not an IPv4 or IPv6 address with a prefix length" };
}

/**
 * Split a comma-separated list the way Istio does: on ',', dropping empty items, without
 * trimming (so a space inside an item is refused by the item's own check).
 */
export function splitList(text: string): string[] {
  return text.split(",").filter((item) => item !== "");
}
