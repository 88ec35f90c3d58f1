// Traffic inside test pods: the proof that interception works is where a connection lands.
import type { ChildProcess } from "node:child_process";
import type { TestPod } from "./test-pods.ts";

/** A TCP listener in the pod, as `uid`, answering every connection with `answer`; resolves once listening. */
export async function startListener(pod: TestPod, port: number, answer: string, uid = 1337): Promise<ChildProcess> {
  const child = pod.spawn(
    [process.execPath, "-e", `require("net").createServer((s)=>s.end(${JSON.stringify(answer)})).listen(${port}, "0.0.0.0", ()=>console.log("ready"))`],
    { uid },
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout?.once("data", () => {
      resolve();
    });
    child.once("exit", (code) => {
      reject(new Error(`listener on ${port} exited ${code}`));
    });
  });
  return child;
}

/** Connect from inside the pod as `uid`: what the peer answered, the error code, or "TIMEOUT". */
export function connectFrom(pod: TestPod, host: string, port: number, uid: number): string {
  const script = `const s=require("net").connect(${port}, ${JSON.stringify(host)});let d="";s.setTimeout(2000,()=>{console.log("TIMEOUT");process.exit(0)});s.on("data",(c)=>d+=c);s.on("end",()=>{console.log(d);process.exit(0)});s.on("error",(e)=>{console.log(e.code);process.exit(0)});`;
  return pod.exec([process.execPath, "-e", script], { uid }).trim();
}
