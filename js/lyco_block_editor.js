/**
 * Block-weight editor on "Load Adapter (block weights)": a slider per block (BASE, INnn, M00, OUTnn) for the
 * chosen id set (SD1.x 17/26, SDXL 12/20, from /lyco/block_presets) and a preset picker. Moving a slider writes
 * the comma-separated vector into the node's block_weights text; picking a preset writes its name; editing the
 * text by hand (or loading a workflow) reads it back into the sliders. Unreadable text is flagged, never rewritten.
 */
import { addPanel, el, fit, getJSON, registerEditor, widen, WidgetEditor } from "./lyco_common.js";

const NODE_ID = "LyCOLoadAdapterBlockWeight";
const SET_LABELS = { sd15_17: "SD1.x ×17", sd15_26: "SD1.x ×26", sdxl_12: "SDXL ×12", sdxl_20: "SDXL ×20" };
const ROW_HEIGHT = 21;
const HEADER_HEIGHT = 52;
const MIN_WIDTH = 430;
const DEFAULT_BLOCKS = 26; // sd15_26, the set shown until the text says otherwise
let presetsPromise = null;

function loadPresets() {
  presetsPromise ??= getJSON("/lyco/block_presets").then((answer) => {
    if (!answer.ok) throw new Error(`/lyco/block_presets answered HTTP ${answer.status}`);
    return answer.body;
  });
  return presetsPromise;
}

const familyOf = (setName) => setName.split("_")[0];
const format = (value) => String(Number(value.toFixed(3)));

/** {set, values, preset} for a block_weights text, or {error}. */
function parse(text, data, currentSet) {
  const wanted = text.trim();
  const families = [familyOf(currentSet), ...Object.keys(data.presets).filter((f) => f !== familyOf(currentSet))];
  for (const family of families) {
    const name = Object.keys(data.presets[family]).find((p) => p.toUpperCase() === wanted.toUpperCase());
    if (name) return { ...parse(data.presets[family][name], data, currentSet), preset: name };
  }
  const tokens = wanted.split(/[,\s]+/).filter(Boolean);
  const values = tokens.map(Number);
  if (!tokens.length || values.some((v) => !Number.isFinite(v))) {
    return { error: `not a preset or a list of numbers: "${wanted}"` };
  }
  const set = Object.keys(data.block_sets).find((s) => data.block_sets[s].length === values.length);
  if (!set) return { error: `${values.length} values; expected 17 or 26 (SD1.x), 12 or 20 (SDXL)` };
  return { set, values, preset: null };
}

class BlockEditor extends WidgetEditor {
  /** The panel is added (and the node sized) at once; the sliders follow when /lyco/block_presets answers. */
  constructor(node) {
    super(node, "block_weights");
    this.data = null;
    this.set = "sd15_26";
    this.values = [];
    this.setPicker = el("select", { className: "lyco-select lyco-set" });
    this.presetPicker = el("select", { className: "lyco-select lyco-preset" });
    this.status = el("span", { className: "lyco-muted lyco-status" });
    this.grid = el("div", { className: "lyco-grid" });
    this.root = el("div", { className: "lyco-panel lyco-blocks" }, [
      el("div", { className: "lyco-row" }, [this.setPicker, this.presetPicker, this.status]),
      this.grid,
    ]);
    this.root.dataset.state = "loading";
    this.setPicker.addEventListener("change", () => this.changeSet(this.setPicker.value));
    this.presetPicker.addEventListener("change", () => this.pickPreset(this.presetPicker.value));
    addPanel(node, "lyco_blocks", this.root, () => this.height());
    widen(node, MIN_WIDTH);
    this.ready = loadPresets().then(
      (data) => {
        this.data = data;
        this.setPicker.replaceChildren(...Object.keys(data.block_sets).map(
          (s) => el("option", { value: s, textContent: SET_LABELS[s] ?? s })));
        this.values = data.block_sets[this.set].map(() => 1);
        this.readBack();
      },
      (error) => {
        this.root.dataset.state = "error";
        this.status.textContent = `block presets unavailable: ${error.message ?? error}`;
        console.warn("[LyCO] block editor:", error);
      },
    );
  }

  height() {
    const blocks = this.data?.block_sets[this.set]?.length ?? DEFAULT_BLOCKS;
    return HEADER_HEIGHT + Math.ceil(blocks / 2) * ROW_HEIGHT;
  }

  /** Rebuild the preset list and the slider rows for the current set. */
  build() {
    const presets = this.data.presets[familyOf(this.set)];
    this.presetPicker.replaceChildren(
      el("option", { value: "", textContent: "preset…" }),
      ...Object.keys(presets).map((p) => el("option", { value: p, textContent: p })),
    );
    this.sliders = this.data.block_sets[this.set].map((block, index) => {
      const readout = el("span", { className: "lyco-value" });
      const slider = el("input", {
        type: "range", min: "-1", max: "2", step: "0.05", className: "lyco-slider", dataset: { block },
      });
      slider.addEventListener("input", () => this.moved(index, Number(slider.value)));
      return { block, slider, readout, row: el("label", { className: "lyco-block" }, [
        el("span", { className: "lyco-block-name", textContent: block }), slider, readout]) };
    });
    this.grid.replaceChildren(...this.sliders.map((s) => s.row));
    this.root.dataset.set = this.set;
    fit(this.node, MIN_WIDTH);
  }

  show(preset) {
    if (this.builtSet !== this.set) {
      this.setPicker.value = this.set;
      this.build();
      this.builtSet = this.set;
    }
    this.sliders.forEach((s, i) => {
      s.slider.value = String(this.values[i]);
      s.readout.textContent = format(this.values[i]);
    });
    this.presetPicker.value = preset ?? "";
    this.root.dataset.state = "ok";
    this.status.textContent = "";
  }

  /** The text → sliders (after a hand edit or a workflow load); unreadable text is only flagged. */
  read(text) {
    if (!this.data) return; // read again once the presets are here
    const parsed = parse(text, this.data, this.set);
    if (parsed.error) {
      this.root.dataset.state = "invalid";
      this.status.textContent = parsed.error;
      return;
    }
    this.set = parsed.set;
    this.values = parsed.values;
    this.show(parsed.preset);
  }

  moved(index, value) {
    this.values[index] = value;
    this.sliders[index].readout.textContent = format(value);
    this.presetPicker.value = "";
    this.write(this.values.map(format).join(","));
  }

  changeSet(set) {
    const byId = Object.fromEntries(this.data.block_sets[this.set].map((b, i) => [b, this.values[i]]));
    this.set = set;
    this.values = this.data.block_sets[set].map((b) => byId[b] ?? 0); // unnamed blocks meant 0 before, too
    this.show(null);
    this.write(this.values.map(format).join(","));
  }

  pickPreset(name) {
    if (!name) return;
    this.write(name);
    this.readBack();
  }
}

registerEditor("lyco.blockEditor", NODE_ID, (node) => new BlockEditor(node));
