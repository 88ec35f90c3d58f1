// The podnet injection template (config/istio/podnet-injection-template.yaml) with the waiter
// image an install uses as its default: Istio's values cannot carry a key of ours (istioctl
// refuses unknown fields), so the image is written into the template text the install passes to
// istiod (`--set-file sidecarInjectorWebhook.templates.podnet=...`). Pure: text in, text out.
import { parse, stringify } from "yaml";

/**
 * The default in the template: the fallback of the innermost waiter-image annotation (the
 * project's name falls back to the legacy podnet.istio.io one, which falls back to the image).
 */
const WAITER_IMAGE_DEFAULT = /(annotation \.ObjectMeta `podnet\.(?:github|istio)\.io\/waiter-image` `)([^`]*)(`)/g;

/**
 * An image reference as the kubelet pulls one: [registry[:port]/]path[:tag][@sha256:digest].
 * Nothing a Go template would read as syntax (no backtick, brace, quote or space) can pass.
 */
const IMAGE_REFERENCE =
  /^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*(?::[0-9]{1,5})?\/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(?:@sha256:[a-f0-9]{64})?$/;

export class TemplateError extends Error {
  override name = "TemplateError";
}

/** `template` with `image` as the waiter's default image. */
export function withWaiterImage(template: string, image: string): string {
  if (image.length > 255 || !IMAGE_REFERENCE.test(image)) {
    throw new TemplateError(`not an image reference: ${JSON.stringify(image.slice(0, 120))} (registry/path:tag or @sha256:digest)`);
  }
  const found = template.match(WAITER_IMAGE_DEFAULT)?.length ?? 0;
  if (found !== 1) throw new TemplateError(`the template names the waiter's default image ${found} times, not once: is it the podnet injection template?`);
  return template.replace(WAITER_IMAGE_DEFAULT, (_all, before: string, _old: string, after: string) => `${before}${image}${after}`);
}

/**
 * The same install for istioctl: an IstioOperator overlay (`istioctl install -f <yours> -f
 * <this>`) carrying what `istiodValues` (config/istio/istiod-values.yaml, the istiod chart's
 * values) sets and the template. CNI mode is a component there (istioctl derives
 * values.pilot.cni.enabled from it), so the chart's `cni.enabled` becomes `components.cni.enabled`:
 * off, istioctl installs no istio-cni agent. Pure: text in, text out.
 */
export function istioOperatorOverlay(istiodValues: string, template: string): string {
  let parsed: unknown;
  try {
    parsed = parse(istiodValues);
  } catch (err) {
    throw new TemplateError(`the istiod values are not YAML: ${err instanceof Error ? (err.message.split("\n")[0] ?? "") : String(err)}`);
  }
  const values = parsed as { cni?: { enabled?: unknown }; global?: unknown; sidecarInjectorWebhook?: Record<string, unknown> } | null;
  if (values === null || typeof values !== "object" || typeof values.cni?.enabled !== "boolean" || typeof values.sidecarInjectorWebhook !== "object") {
    throw new TemplateError("the istiod values do not set cni.enabled and sidecarInjectorWebhook: are they config/istio/istiod-values.yaml?");
  }
  const overlay = {
    apiVersion: "install.istio.io/v1alpha1",
    kind: "IstioOperator",
    spec: {
      components: { cni: { enabled: values.cni.enabled } },
      values: {
        ...(values.global === undefined ? {} : { global: values.global }),
        sidecarInjectorWebhook: { ...values.sidecarInjectorWebhook, templates: { podnet: template } },
      },
    },
  };
  return `# The podnet injection template and the settings it needs, for istioctl: istioctl install -f <your IstioOperator> -f <this file>\n${stringify(overlay)}`;
}
