// The link steps, decided from `ip -j` listings (no namespace: listings as iproute2 prints them).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import type { NetSetupStep } from "../rules/routes.ts";
import { ApplyError } from "./commands.ts";
import { replaceIpSteps, stepPresent } from "./ip-steps.ts";
import type { NamespaceOps } from "./namespace-ops.ts";

const RULE: NetSetupStep = { kind: "rule", family: 4, fwmark: "1337", table: "133" };
const ROUTE: NetSetupStep = { kind: "route", family: 4, table: "133", device: "lo" };
const ADDRESS: NetSetupStep = { kind: "address", family: 6, address: "::6/128", device: "lo" };

// As iproute2 6.1 prints them in a namespace holding the steps.
const RULES =
  '[{"priority":0,"src":"all","table":"local"},{"priority":32765,"src":"all","fwmark":"0x539","table":"133"},{"priority":32766,"src":"all","table":"main"}]';
const ROUTES =
  '[{"type":"local","dst":"default","dev":"lo","table":"133","scope":"host","flags":[]},{"type":"local","dst":"127.0.0.1","dev":"lo","table":"local","protocol":"kernel","scope":"host","prefsrc":"127.0.0.1","flags":[]}]';
const ADDRESSES =
  '[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet6","local":"::6","prefixlen":128},{"family":"inet6","local":"::1","prefixlen":128}]}]';

/** NamespaceOps answering `ip -j` from `listings` and recording each change. */
function opsWith(listings: Record<string, string>): { ops: NamespaceOps; changes: string[]; shown: string[] } {
  const changes: string[] = [];
  const shown: string[] = [];
  const unused = (): never => assert.fail("not an ip step");
  return {
    changes,
    shown,
    ops: {
      iptablesSave: unused,
      iptablesRestore: unused,
      nftList: unused,
      nftApply: unused,
      ipShow: (args) => {
        shown.push(args.join(" "));
        return Promise.resolve(listings[args.join(" ")] ?? "[]");
      },
      ip: (args) => {
        changes.push(args.join(" "));
        return Promise.resolve();
      },
    },
  };
}

describe("link steps from what the namespace holds", () => {
  test("present: rule (hex fwmark), route (any table listing), address", () => {
    assert.equal(stepPresent(RULE, RULES), true);
    assert.equal(stepPresent({ ...RULE, fwmark: "1338" }, RULES), false);
    assert.equal(stepPresent(ROUTE, ROUTES), true);
    assert.equal(stepPresent({ ...ROUTE, table: "134" }, ROUTES), false);
    assert.equal(stepPresent(ADDRESS, ADDRESSES), true);
    assert.equal(stepPresent(ADDRESS, "[]"), false);
    assert.equal(stepPresent(ADDRESS, ""), false);
  });

  test("only what is missing is added, only what is there is deleted, nothing listed when nothing changes", async () => {
    const fresh = opsWith({});
    await replaceIpSteps(fresh.ops, [], [RULE, ROUTE]);
    assert.deepEqual(fresh.changes, ["-4 rule add fwmark 1337 lookup 133", "-4 route add local default dev lo table 133"]);

    const half = opsWith({ "-4 rule show": RULES });
    await replaceIpSteps(half.ops, [], [RULE, ROUTE]);
    assert.deepEqual(half.changes, ["-4 route add local default dev lo table 133"], "the rule left by a crashed apply is not added twice");

    const gone = opsWith({ "-4 rule show": RULES });
    await replaceIpSteps(gone.ops, [RULE, ROUTE], []);
    assert.deepEqual(gone.changes, ["-4 rule del fwmark 1337 lookup 133"], "the route already gone is not deleted");

    const same = opsWith({});
    await replaceIpSteps(same.ops, [RULE], [RULE]);
    assert.deepEqual([same.shown, same.changes], [[], []]);
  });

  test("property: any listing is judged or refused as 'node-unavailable', never a crash or a change", async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.string({ maxLength: 200 }), fc.json({ maxDepth: 3 })), async (listing) => {
        const { ops, changes } = opsWith({ "-4 rule show": listing, "-4 route show table all": listing });
        try {
          await replaceIpSteps(ops, [], [RULE, ROUTE]);
        } catch (err) {
          assert.ok(err instanceof ApplyError && err.kind === "node-unavailable", String(err));
          assert.deepEqual(changes, []);
        }
      }),
      { numRuns: 500 },
    );
  });
});
