/**
 * Info panel on every LyCO node with an adapter_name input (the loaders, Adapter Info): when an adapter is picked
 * (or a workflow is loaded), GET /lyco/info?name=… and show method badges, rank/alpha, DoRA/Tucker, base model,
 * size and hash, and the trigger words with a copy button. The last answer is kept as node.lycoInfo; the
 * panel's data-state is "loading", "ready" or "error" (tests wait on it).
 */
import { app } from "../../scripts/app.js";
import { addPanel, chain, el, findWidget, fit, getJSON, isAdapterNode } from "./lyco_common.js";

const PANEL_HEIGHT = 118;

// a method's name as people write it: the server's method_labels (each method's own record), else its key
function methodLabel(key, labels) {
  const [algo, extra] = key.split("+");
  const label = labels?.[algo] ?? algo;
  return extra ? `${label}+${extra === "dora" ? "DoRA" : extra}` : label;
}

function range(values, digits = 4) {
  if (!values) return "–";
  const [low, high] = values.map((v) => Number(v.toPrecision(digits)));
  return low === high ? `${low}` : `${low}–${high}`;
}

function sizeText(bytes) {
  const units = ["B", "KB", "MB", "GB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "copied";
  } catch {
    const area = el("textarea", { value: text, style: { position: "fixed", opacity: "0" } });
    document.body.append(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    button.textContent = copied ? "copied" : "copy failed";
  }
  setTimeout(() => (button.textContent = "copy"), 1500);
}

function triggerRow(words) {
  if (!words.length) return el("div", { className: "lyco-row lyco-muted", textContent: "no trigger words" });
  const button = el("button", { className: "lyco-button lyco-copy", textContent: "copy" });
  button.addEventListener("click", () => copyText(words.join(", "), button));
  return el("div", { className: "lyco-row lyco-triggers" }, [
    ...words.map((word) => el("span", { className: "lyco-chip", textContent: word })),
    button,
  ]);
}

function render(panel, info) {
  const badges = Object.entries(info.methods).map(([key, count]) =>
    el("span", { className: `lyco-badge lyco-badge-${key.split("+")[0]}`, textContent: `${methodLabel(key, info.method_labels)} ×${count}` }),
  );
  if (info.dora) badges.push(el("span", { className: "lyco-badge lyco-badge-dora", textContent: `DoRA ×${info.dora}` }));
  if (info.tucker) badges.push(el("span", { className: "lyco-badge", textContent: `Tucker ×${info.tucker}` }));
  panel.replaceChildren(
    el("div", { className: "lyco-row" }, badges),
    el("div", {
      className: "lyco-row lyco-facts",
      textContent: `rank ${range(info.rank_range)} · alpha ${range(info.alpha_range)} · ${info.layout} · ` +
        `${info.modules} modules`,
    }),
    el("div", { className: "lyco-row", textContent: `base model: ${info.base_model ?? "not recorded"}` }),
    triggerRow(info.trigger_words),
    el("div", { className: "lyco-row lyco-muted", textContent: `${sizeText(info.size)} · sha256 ${info.sha256}` }),
  );
  panel.dataset.methods = Object.keys(info.methods).join(",");
  panel.dataset.rank = info.rank_range ? range(info.rank_range) : "";
}

async function refresh(node, panel) {
  const name = findWidget(node, "adapter_name")?.value;
  const token = (panel.lycoToken = (panel.lycoToken ?? 0) + 1);
  if (!name) {
    panel.dataset.state = "error";
    panel.replaceChildren(el("div", { className: "lyco-muted", textContent: "no adapter in the loras folder" }));
    return;
  }
  panel.dataset.state = "loading";
  panel.dataset.name = name;
  panel.dataset.lycoNode = String(node.id); // not data-node-id: the Vue renderer marks its node elements with that
  let answer;
  try {
    answer = await getJSON(`/lyco/info?name=${encodeURIComponent(name)}`);
  } catch (error) {
    answer = { ok: false, body: { error: `request failed: ${error}` } };
  }
  if (token !== panel.lycoToken) return; // a newer pick is on its way
  node.lycoInfo = answer.body;
  if (answer.ok && answer.body) {
    render(panel, answer.body);
    panel.dataset.state = "ready";
  } else {
    panel.replaceChildren(el("div", { className: "lyco-error", textContent: answer.body?.error ?? `HTTP ${answer.status}` }));
    panel.dataset.state = "error";
  }
  app.graph?.setDirtyCanvas(true, true);
}

function attach(node) {
  const panel = el("div", { className: "lyco-panel lyco-info", dataset: { state: "loading" } });
  addPanel(node, "lyco_info", panel, () => PANEL_HEIGHT);
  const picker = findWidget(node, "adapter_name");
  if (picker) chain(picker, "callback", () => refresh(node, panel));
  node.lycoRefreshInfo = () => refresh(node, panel);
  fit(node);
  refresh(node, panel);
}

app.registerExtension({
  name: "lyco.infoPanel",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isAdapterNode(nodeData)) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      attach(this);
    });
    chain(nodeType.prototype, "onConfigure", function () {
      this.lycoRefreshInfo?.(); // values restored from a workflow do not fire widget callbacks
    });
  },
});
