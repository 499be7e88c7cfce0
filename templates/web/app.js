// The sample page: loads the bundle's model with EdgeModel and runs the task contract on an input.
// All text reaches the page through textContent, never as HTML.
// URL options (for testing and benchmarks): ?runtime=wllama|webllm&gpu=on|off|auto&threads=N
import { EdgeModel } from "./edgepack/edge-model.js";
import { EXAMPLE_INPUT, MODEL_NAME } from "./app-config.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

function describe(info) {
  const where = info.backend === "wasm-cpu" ? `CPU (WebAssembly, ${info.threads} thread${info.threads === 1 ? "" : "s"})` : info.backend;
  const cache = info.fromCache ? "from the browser cache" : "downloaded and verified";
  return `${info.runtime} ${info.runtimeVersion} on ${where}; model ${cache} in ${(info.loadMs / 1000).toFixed(1)} s. ${info.reason}.`;
}

async function main() {
  $("input").value = EXAMPLE_INPUT;
  const model = await EdgeModel.load({
    runtime: params.get("runtime") ?? "auto",
    gpu: params.get("gpu") ?? "auto",
    threads: params.has("threads") ? Number(params.get("threads")) : undefined,
    onProgress: ({ phase, fraction }) => {
      $("progress").value = fraction ?? 0;
      $("status").textContent = phase === "download" ? `Downloading ${MODEL_NAME}… ${Math.round((fraction ?? 0) * 100)} %` : "Starting the runtime…";
    },
  });
  $("status").textContent = "Ready.";
  $("runtime").textContent = describe(model.info);
  $("run").disabled = false;
  let controller = null;
  $("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    controller = new AbortController();
    $("run").disabled = true;
    $("stop").disabled = false;
    $("output").textContent = "";
    $("parsed").textContent = "";
    try {
      const result = await model.run($("input").value, {
        instruction: $("instruction")?.value ?? "",
        signal: controller.signal,
        onToken: (piece) => { $("output").textContent += piece; },
      });
      $("parsed").textContent = JSON.stringify({ ok: result.ok, value: result.value, error: result.error }, null, 2);
    } catch (err) {
      $("parsed").textContent = `Error: ${err.message ?? err}`;
    } finally {
      $("run").disabled = false;
      $("stop").disabled = true;
    }
  });
  $("stop").addEventListener("click", () => controller?.abort());
  return model;
}

// window.edgepack is how tests and benchmarks drive the page (see targets/web/verify_browser.py).
const ready = main();
window.edgepack = { ready };
ready.catch((err) => {
  $("status").textContent = `Could not load the model: ${err.message ?? err}`;
  console.error(err);
});
