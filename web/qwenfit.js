// QwenFit browser extension. The live VRAM panel and plan preview build on this.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "QwenFit.core",
  async setup() {
    console.log("[QwenFit] extension loaded");
  },
});
