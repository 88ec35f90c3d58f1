// `pnc wait`: the waiter init container's command (see waiter.ts and the README's exit codes).
//
//   --annotations <file>      downward API annotations file       /etc/istio/pod/annotations
//   --timeout <seconds>       give up after                       120
//   --poll <ms>               re-read interval without a probe     500
//   --probe-every <ms>        probe interval (the probe is the signal) 10
//   --capture-port <port>     inbound capture port to listen on   15006
//   --probe-target <ip:port>  loopback address nothing listens on 127.0.0.2:15999
//   --no-probe                skip the interception probe
//   --termination-log <file>  one-line reason on failure          /dev/termination-log
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { WAIT_EXIT, waitForInterception } from "./waiter.ts";
import { errorMessage } from "../contract/errors.ts";

export async function waitMain(argv: readonly string[]): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args: [...argv],
      options: {
        annotations: { type: "string", default: "/etc/istio/pod/annotations" },
        timeout: { type: "string", default: "120" },
        poll: { type: "string", default: "500" },
        "probe-every": { type: "string", default: "10" },
        "capture-port": { type: "string", default: "15006" },
        "probe-target": { type: "string", default: "127.0.0.2:15999" },
        "no-probe": { type: "boolean", default: false },
        "termination-log": { type: "string", default: "/dev/termination-log" },
      },
    }).values;
  } catch (err) {
    process.stderr.write(`pnc wait: ${errorMessage(err)}\n`);
    return WAIT_EXIT.usage;
  }
  const timeout = Number(values.timeout);
  const poll = Number(values.poll);
  const probeEvery = Number(values["probe-every"]);
  const capturePort = Number(values["capture-port"]);
  const target = /^(\d+\.\d+\.\d+\.\d+):(\d+)$/.exec(values["probe-target"]);
  if (!(timeout > 0) || !(poll > 0) || !(probeEvery > 0) || !Number.isInteger(capturePort) || capturePort < 1 || capturePort > 65535 || target === null) {
    process.stderr.write("pnc wait: --timeout and --poll must be positive, --capture-port a port, --probe-target ip:port\n");
    return WAIT_EXIT.usage;
  }
  const started = Date.now();
  const result = await waitForInterception({
    annotationsFile: values.annotations,
    timeoutMs: timeout * 1000,
    pollMs: poll,
    probeIntervalMs: probeEvery,
    probe: values["no-probe"] ? null : { capturePort, target: { host: target[1] ?? "", port: Number(target[2]) }, timeoutMs: 3000 },
    ownNetnsLink: "/proc/self/ns/net",
    log: (line) => process.stderr.write(`pnc wait: ${line}\n`),
  });
  process.stderr.write(`pnc wait: ${result.reason} (after ${Date.now() - started} ms)\n`);
  if (result.code !== WAIT_EXIT.ok) {
    try {
      writeFileSync(values["termination-log"], `${result.reason}\n`);
    } catch {
      // no termination log outside a container
    }
  }
  return result.code;
}
