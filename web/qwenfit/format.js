// Formatting shared by the QwenFit panel and node badges.
export const GIB = 1024 ** 3;

/** "5.32 GiB" (or MiB under a GiB, so the tiny test models read sensibly). */
export function formatBytes(bytes) {
  if (bytes == null || !Number.isFinite(bytes)) return "?";
  if (bytes < GIB) return `${(bytes / 1024 ** 2).toFixed(bytes < 10 * 1024 ** 2 ? 1 : 0)} MiB`;
  return `${(bytes / GIB).toFixed(2)} GiB`;
}

/** "0.745 s/step" with sensible precision. */
export function formatStep(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "? s/step";
  const digits = seconds < 0.1 ? 4 : seconds < 10 ? 3 : 1;
  return `${seconds.toFixed(digits)} s/step`;
}

/** The frontend's setting store (its API moved between versions). */
export function getSetting(app, id, fallback) {
  const store = app.extensionManager?.setting;
  const value = store?.get ? store.get(id) : app.ui?.settings?.getSettingValue?.(id);
  return value ?? fallback;
}
