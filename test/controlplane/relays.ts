// Relays from this machine's loopback into a network namespace (relay.mjs): two processes per
// port, one listening here on 127.0.0.1 and one connecting inside the namespace, joined by a
// unix socket. How the tests reach what runs in the cluster's network without giving the host
// an address or a route.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

export const RELAY_SCRIPT = path.join(import.meta.dirname, "relay.mjs");

/** A TCP port free on 127.0.0.1 now (the harness's, here to keep the harness's import of this module one-way). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => {
        if (address === null || typeof address === "string") reject(new Error("no port"));
        else resolve(address.port);
      });
    });
  });
}

export interface Relay {
  /** The port on 127.0.0.1 here. */
  readonly port: number;
  stop(): Promise<void>;
}

function started(child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    let output = "";
    child.stdout?.on("data", (c: Buffer) => {
      output += c.toString();
      if (output.includes("relay ")) resolve();
    });
    child.stderr?.on("data", (c: Buffer) => (output += c.toString()));
    child.once("exit", (code) => {
      reject(new Error(`relay exited (${String(code)}): ${output}`));
    });
  });
}

/** 127.0.0.1:<returned port> here → `host:port` as seen from inside `netns` (under /run/netns). */
export async function relayInto(netns: string, target: { host: string; port: number }): Promise<Relay> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "pnc-relay-"));
  const socket = path.join(dir, "relay.sock");
  const port = await freePort();
  const inside = spawn("nsenter", [`--net=/run/netns/${netns}`, "--", process.execPath, RELAY_SCRIPT, `unix:${socket}`, `tcp:${target.host}:${target.port}`], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  await started(inside);
  const here = spawn(process.execPath, [RELAY_SCRIPT, `tcp:127.0.0.1:${port}`, `unix:${socket}`], { stdio: ["ignore", "pipe", "pipe"] });
  await started(here);
  const stopOne = (child: ChildProcess): Promise<void> =>
    child.exitCode !== null || child.signalCode !== null
      ? Promise.resolve()
      : new Promise((resolve) => {
          child.once("exit", () => {
            resolve();
          });
          child.kill("SIGTERM");
        });
  return {
    port,
    stop: async () => {
      await Promise.all([stopOne(here), stopOne(inside)]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
