"""The workbench's commands in one table: keys, palette titles, help lines and footer words."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One workbench action: its key ("" for palette only), what the help screen, palette and footer call it."""

    keys: str
    action: str
    title: str
    help: str
    show: bool = False  # listed in the footer
    short: str = ""  # the footer's word for it


COMMANDS: tuple[Command, ...] = (
    Command("space", "ablate('zero')", "Zero-ablate head", "toggle zero ablation of the selected head", True,
            "zero"),
    Command("m", "ablate('mean')", "Mean-ablate head", "toggle mean ablation (over reference prompts)", True,
            "mean"),
    Command("R", "ablate('resample')", "Resample-ablate head", "toggle resample ablation from the corrupted prompt"),
    Command("s", "scale_head", "Scale head", "multiply the selected head's output by a factor", True, "scale"),
    Command("p", "patch_head", "Patch head", "patch the selected head from the corrupted prompt", True, "patch"),
    Command("K", "knockout", "Knock out attention edge",
            "arrows pick a query→key cell of the attention map; k / enter toggles it", True,
            "knockout"),
    Command("", "knockout_at", "Knock out attention edge by positions…",
            "asks query,key; toggles that edge of the selected head"),
    Command("v", "build_vector", "Build steering vector…",
            "positive minus negative prompts' residuals at a layer; steers with it", True,
            "steer"),
    Command("V", "load_vector", "Load steering vector from file…",
            "a .safetensors or .npy vector [d_model], then steer with it"),
    Command("A", "ablate_component('attn')", "Ablate attention of layer…",
            "zero, mean or resample the whole attention output of a layer"),
    Command("M", "ablate_component('mlp')", "Ablate MLP of layer…", "zero, mean or resample the MLP output of a layer"),
    Command("N", "clamp_neuron", "Clamp neuron…", "set one MLP neuron of a layer to a value"),
    Command("plus", "add_intervention", "Add intervention…", "a new intervention of any kind, filled in as a form",
            True, "add"),
    Command("enter", "edit_head", "Edit intervention", "edit the intervention on the selected head"),
    Command("u", "undo", "Undo", "undo the last intervention change", True, "undo"),
    Command("g", "generate", "Generate", "generate baseline and intervened continuations", True, "generate"),
    Command("c", "cycle_grid", "Colour grid by next metric", "attribution, sink score, patching, AtP", True,
            "grid metric"),
    Command("C", "choose_grid", "Colour grid by…", "choose the grid's metric from a list (detectors included)"),
    Command("colon", "go_to", "Go to head or layer…", "type an address: L23.H3, L23 or mlp 5"),
    Command("w", "sweep('head')", "Sweep: head patching", "patch every head from the corrupted prompt"),
    Command("a", "sweep('atp')", "Sweep: attribution patching", "AtP estimate for every head"),
    Command("r", "sweep('resid')", "Sweep: residual patching", "patch the residual stream per layer and position"),
    Command("escape,ctrl+c", "cancel", "Cancel",
            "stop a running sweep, generation, set sweep, estimate or feature attribution; leave a text field"),
    Command("T", "use_spaced_tokens", "Use the spaced target / foil",
            "replace a target typed without its leading space by the token the model predicts "
            "(in every row of a prompt set whose rows fail the checks)"),
    Command("percent_sign", "toggle_effect_scale", "Sweeps: Δ or normalised effect",
            "show sweep and set-sweep grids as Δ metric (patched - base) or as the share of the gap "
            "(patched - base) / (source - base), 1 = fully recovered; recorded in the session"),
    Command("0", "toggle_numbers", "Numbers in heatmaps", "print every heatmap cell's value (again: colours only)"),
    Command("E", "show_message", "Show the full message", "the whole status line (an error in full)"),
    Command("slash,i", "focus_prompt", "Edit prompt", "move the focus to the clean prompt"),
    Command("1", "show_tab('tab-attention')", "View: attention", "attention pattern of the selected head"),
    Command("2", "show_tab('tab-lens')", "View: logit lens", "per-layer decoding of the residual"),
    Command("3", "show_tab('tab-sweep')", "View: sweeps", "sweep progress and results"),
    Command("4", "show_tab('tab-generate')", "View: generation", "baseline and intervened generation"),
    Command("5", "show_tab('tab-stats')", "View: activation stats", "residual norms, massive activations"),
    Command("L", "prompt_set", "Prompt set…",
            "load a JSONL / CSV set or generate ioi / capitals / induction / antonyms / country-capital / "
            "uppercase rows; its first row becomes the inputs"),
    Command("left_square_bracket", "set_row(-1)", "Prompt set: previous row", "the previous row becomes the inputs"),
    Command("right_square_bracket", "set_row(1)", "Prompt set: next row", "the next row becomes the inputs"),
    Command("O", "set_numbers", "Prompt set: metric over the set",
            "mean ± std of the metric over every row, without and with the interventions (set tab)"),
    Command("H", "set_sweep", "Prompt set: head patching sweep",
            "patch every head in every row; the grid shows the mean per head (set patching)"),
    Command("Z", "estimate", "Prompt set: attribution estimate…",
            "AtP / AtP* / GradDrop / EAP-IG over the set; verify K patches its top K heads exactly (marked =)"),
    Command("D", "detect_heads", "Head detectors",
            "previous-token, duplicate-token, induction, sink, copy suppression grids (c cycles; cached per model)"),
    Command("Y", "massive", "Prompt set: massive activations",
            "per layer, residual dims that dwarf the rest, and whether they stay constant over the set"),
    Command("", "abc_means", "Prompt set: mean ablation over its corrupted prompts (ABC)",
            "mean ablation averages over the set's corrupted prompts (the IOI paper's ABC distribution), "
            "in single runs and over the set; F sets other reference prompts"),
    Command("f", "function_vector", "Prompt set: function vector…",
            "in-context set (antonyms…): heads' average indirect effect (grid), the top heads' summed mean "
            "output as steering vector fv-<set>, zero-shot accuracy with and without it at a layer"),
    Command("", "role_heads", "Prompt set: name-mover / S-inhibition scores",
            "on an IOI set: attention END→IO, END→S2 and direct effect on logit(IO) - logit(S) per head (grids)"),
    Command("", "drop_failing_rows", "Prompt set: drop rows that fail the checks",
            "a new set without the rows whose target / foil or lengths fail (T fixes spacing instead)"),
    Command("7", "show_tab('tab-features')", "View: features",
            "the strongest SAE features of the clean prompt (the SAE folder comes from 'Features: SAE folder…')"),
    Command("", "sae_folder", "Features: SAE folder…",
            "read SAE features from a folder (SAELens, sparsify or Gemma Scope layout) in the features tab"),
    Command("comma", "feature_move(-1)", "Features: previous feature",
            "select the feature above in the features tab's list (its card shows beside it)"),
    Command("full_stop", "feature_move(1)", "Features: next feature",
            "select the feature below in the features tab's list (its card shows beside it)"),
    Command("less_than_sign", "feature_token(-1)", "Features: previous token",
            "list the top features of the token before the selected one"),
    Command("greater_than_sign", "feature_token(1)", "Features: next token",
            "list the top features of the token after the selected one"),
    Command("z", "feature_edit('ablate')", "Features: ablate feature",
            "toggle ablating the selected feature at the selected token (the SAE's error term is kept)"),
    Command("equals_sign", "feature_edit('clamp')", "Features: clamp feature…",
            "set the selected feature's activation at the selected token to a value"),
    Command("d", "feature_edit('steer')", "Features: steer with feature…",
            "add a coefficient to the selected feature's activation at the selected token (coeff x its "
            "decoder direction)"),
    Command("t", "feature_label", "Features: name feature…",
            "name the selected feature (e.g. 'L15 res: Mary/John names'); recorded in the session"),
    Command("U", "feature_attribution", "Features: attribute the metric",
            "AtP of the metric over every active SAE feature of the clean prompt (the SAE's error its own node), "
            "the top 10 ablated exactly, each one's direct effect; a ranked table in the features tab"),
    Command("J", "feature_pick", "Features: pick an attribution row…",
            "select a row of the feature attribution table by its #: its feature at its token, with its "
            "card; the feature keys then edit it there"),
    Command("6", "show_tab('tab-set')", "View: prompt set", "rows, set numbers, set sweep, estimate, massive activations"),
    Command("X", "clear_interventions", "Remove all interventions", "clear the list (undo brings it back)"),
    Command("n", "note", "Add a note", "write a note into the session"),
    Command("", "retry_saving", "Retry saving", "write again what the session could not save"),
    Command("W", "sweep_options", "Sweep…", "choose heads / attention / MLP / residual / AtP, noising or "
            "denoising, on top of the active interventions or not"),
    Command("Q", "path_sweep", "Path sweep: senders → this head…",
            "asks q, k or v: each earlier head's path effect into the selected head's input, in the grid"),
    Command("", "sweep_with('head','denoising')", "Sweep: head denoising",
            "patch every head from the clean prompt into the corrupted run"),
    Command("", "sweep_with('attn','noising')", "Sweep: attention output per layer",
            "patch each layer's attention output per position, on top of the interventions"),
    Command("", "sweep_with('mlp','noising')", "Sweep: MLP output per layer",
            "patch each layer's MLP output per position, on top of the interventions"),
    Command("b", "pin_baseline", "Pin baseline / unpin",
            "pin the current result: every Δ is then against the pin, until b again"),
    Command("P", "metric_position", "Metric position…", "measure the metric at a chosen token (-1: last)"),
    Command("", "metric_kind", "Metric: choose…", "logit difference, probability, loss or KL"),
    Command("G", "generation_settings", "Generation settings…", "max new tokens, temperature, seed for g"),
    Command("F", "reference_prompts", "Mean-ablation reference prompts…",
            "edit the prompts mean ablation averages over (recorded in the session)"),
    Command("e", "export", "Export…", "write the sweep, attribution or logit lens as CSV, the sweep as safetensors"),
    Command("S", "sessions", "Sessions", "list, open and replay sessions"),
    Command("question_mark,f1", "help", "Keys", "show every key", True, "keys"),
    Command("q", "quit", "Quit", "leave mechscope"),
)

# Keys that only make sense inside one widget, listed on the help screen.
WIDGET_KEYS: tuple[tuple[str, str], ...] = (
    ("arrows / h j k l", "move the cursor on the layer x head grid"),
    ("pgup / pgdn / home / end", "jump layers on the grid"),
    ("shift+pgup / pgdn / home / end", "scroll the open view (attention, lens, sweep...) wherever the focus is"),
    ("arrows (attention)", "move the query x key cell cursor of the attention map"),
    ("k / enter (attention)", "toggle the knockout of the edge under the cursor; esc back to the grid"),
    ("space (list)", "toggle the highlighted intervention on or off"),
    ("enter (list)", "edit the highlighted intervention"),
    ("x / delete (list)", "delete the highlighted intervention"),
    ("enter (prompt)", "run now instead of waiting for typing to pause"),
    ("tab / shift+tab", "move between prompt, grid, list and views"),
    ("ctrl+p", "command palette: every action by name"),
    ("ctrl+q", "quit"),
)


def key_of(action: str) -> str:
    """The key bound to an action of the table (`set_numbers`, `set_row(1)`), as the help names it;
    every hint on screen names its key through this."""
    for command in COMMANDS:
        if command.action == action or command.action.split("(")[0] == action:
            return key_label(command.keys).split(" / ")[0]
    raise KeyError(f"no command {action!r} in the key table")


def palette_title(action: str) -> str:
    """How the palette names an action, for hints about actions without a key."""
    return next(command.title for command in COMMANDS if command.action == action)


def key_label(keys: str) -> str:
    if not keys:
        return "palette"
    names = {"question_mark": "?", "slash": "/", "space": "space", "escape": "esc", "plus": "+",
             "left_square_bracket": "[", "right_square_bracket": "]", "colon": ":", "percent_sign": "%",
             "comma": ",", "full_stop": ".", "less_than_sign": "<", "greater_than_sign": ">", "equals_sign": "="}
    return " / ".join(names.get(key, key) for key in keys.split(","))
