// Error text shared by every component: what a log line, a refusal or an Event says.
import type { z } from "zod";

/** The message of anything thrown, for logs, refusals and Events. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Every problem a schema found, `field: message` joined by "; "; `root` names the document itself. */
export function formatSchemaIssues(error: z.ZodError, root: string): string {
  return error.issues.map((i) => `${i.path.map(String).join(".") || root}: ${i.message}`).join("; ");
}
