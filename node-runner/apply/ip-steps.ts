// The link steps beside the rules (rules/routes.ts: the ::6 address, TPROXY's policy routing),
// moved from what the previous apply did to what the new config wants by looking at what the
// namespace holds (`ip -j`, JSON) — never by reading `ip`'s error messages: a step already
// there is not added again, one already gone is not deleted.
import { z } from "zod";
import { ipCommand, type NetSetupStep } from "../rules/routes.ts";
import { errorMessage } from "../../lib/errors.ts";
import { ApplyError } from "./commands.ts";
import type { NamespaceOps } from "./namespace-ops.ts";

/** The `ip -j` listing that shows whether a step is in place. */
export function ipShowArgs(step: NetSetupStep): string[] {
  switch (step.kind) {
    case "address":
      return ["-6", "addr", "show", "dev", step.device];
    case "rule":
      return [`-${step.family}`, "rule", "show"];
    case "route":
      // Every table at once: showing one table that holds nothing is an error.
      return [`-${step.family}`, "route", "show", "table", "all"];
  }
}

const addressListing = z.array(
  z.looseObject({
    ifname: z.string().optional(),
    addr_info: z.array(z.looseObject({ local: z.string().optional(), prefixlen: z.number().optional() })).optional(),
  }),
);
const ruleListing = z.array(z.looseObject({ fwmark: z.string().optional(), table: z.union([z.string(), z.number()]).optional() }));
const routeListing = z.array(
  z.looseObject({ type: z.string().optional(), dst: z.string().optional(), dev: z.string().optional(), table: z.union([z.string(), z.number()]).optional() }),
);

/** The kernel's named tables, as `ip` prints them. */
const NAMED_TABLES: Readonly<Record<string, string>> = { local: "255", main: "254", default: "253" };
const tableId = (table: string | number | undefined): string => (table === undefined ? "254" : (NAMED_TABLES[String(table)] ?? String(table)));

/** Whether `listing` (the output of ipShowArgs(step)) shows the step in place. Throws on output that is not such a listing. */
export function stepPresent(step: NetSetupStep, listing: string): boolean {
  const json: unknown = JSON.parse(listing === "" ? "[]" : listing);
  switch (step.kind) {
    case "address": {
      const [address, prefix] = step.address.split("/");
      return addressListing.parse(json).some((link) => (link.addr_info ?? []).some((a) => a.local === address && String(a.prefixlen) === prefix));
    }
    case "rule":
      return ruleListing.parse(json).some((r) => r.fwmark !== undefined && Number(r.fwmark) === Number(step.fwmark) && tableId(r.table) === step.table);
    case "route":
      return routeListing.parse(json).some((r) => r.type === "local" && r.dst === "default" && r.dev === step.device && tableId(r.table) === step.table);
  }
}

/**
 * From the steps of the previous apply (its record's) to the new config's: those it no longer
 * has are undone first (a TPROXY pod switched to REDIRECT keeps no policy routing), then those
 * it did not have are done; each only where the namespace says it is needed. Steps in both are
 * left alone. Nothing is listed when nothing changes.
 */
export async function replaceIpSteps(ops: NamespaceOps, previous: readonly NetSetupStep[], steps: readonly NetSetupStep[]): Promise<void> {
  const key = (step: NetSetupStep): string => JSON.stringify(step);
  const wanted = new Set(steps.map(key));
  const had = new Set(previous.map(key));
  const undo = previous.filter((s) => !wanted.has(key(s)));
  const todo = steps.filter((s) => !had.has(key(s)));
  if (undo.length === 0 && todo.length === 0) return;
  const listings = new Map<string, string>();
  const present = async (step: NetSetupStep): Promise<boolean> => {
    const args = ipShowArgs(step);
    let listing = listings.get(args.join(" "));
    if (listing === undefined) {
      listing = await ops.ipShow(args);
      listings.set(args.join(" "), listing);
    }
    try {
      return stepPresent(step, listing);
    } catch (err) {
      // An iproute2 that prints no JSON listing: this node cannot run the step now.
      throw new ApplyError(`ip -j ${args.join(" ")} printed no listing: ${errorMessage(err).slice(0, 200)}`, "node-unavailable");
    }
  };
  // Listed once, before any change: each change below is of a different address, rule or route.
  const needed: string[][] = [];
  for (const step of undo) if (await present(step)) needed.push(ipCommand(step, "del"));
  for (const step of todo) if (!(await present(step))) needed.push(ipCommand(step, "add"));
  for (const args of needed) await ops.ip(args);
}
