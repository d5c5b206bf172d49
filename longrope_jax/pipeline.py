"""The progressive LongRoPE pipeline behind `python -m experiments.extend`.

Stages (each skippable via config.pipeline.stages, recorded in <workdir>/manifest.json):
  1 search_long   λ1 on the base model at pipeline.first_target
  2 finetune      fine-tune with λ1 at finetune.seq_len (mixed short/long windows if finetune.long_ratio < 1)
  3 search_final  λ2 on the fine-tuned model at pipeline.final_target; saved long factors are λ2 ⊙ λ1
  4 search_short  short factors at the original length with a tight upper bound (short-context recovery)
  5 export        HF directory (rope_scaling longrope) + Orbax copy
  6 report        perplexity vs length for base / PI / YaRN / result, factor plots, report.md
Stages hand over through files in the workdir. A rerun skips finished stages whose settings are unchanged,
resumes the stage in progress (search and training resume exactly), and refuses to mix a finished stage made
with other settings with new ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from longrope_jax.errors import ConfigError
from longrope_jax.io import read_json, write_json_atomic, write_text_atomic
from longrope_jax.job_settings import JobSettings, parse_job
from longrope_jax.resume import normalised, refuse_changed
from longrope_jax.model.config import SPEED_ONLY_MODEL_KEYS

STAGES = ("search_long", "finetune", "search_final", "search_short", "export", "report")
MANIFEST = "manifest.json"


# Settings added after workdirs already existed, left out of stage fingerprints while at these values so finished
# stages of older workdirs still match. verdict_results never matters here: the pipeline turns the verdict off.
_LATER_DEFAULTS = {"model": {"param_dtype": "float32"},
                   "search": {"seed_methods": ["pi", "ntk", "yarn"], "seed_scales": [1.0]},
                   "pipeline": {"report_passkey_trials": 2, "report_ruler_tasks": ["niah_single_1"],
                                "report_ruler_samples": 2}}
REPORT_SETTINGS = ("report_passkey_trials", "report_ruler_tasks", "report_ruler_samples")
# Speed / memory settings that never change the results; also dropped from fingerprints stored before they were
# left out, so switching them (e.g. model.remat) never invalidates a finished stage.
_NOT_FINGERPRINTED = {"search": ("verdict_results",), "model": SPEED_ONLY_MODEL_KEYS}
FINGERPRINT_VERSION = 2
# The config sections each stage reads.
_STAGE_SECTIONS = {"search_long": ("model", "data", "search"), "finetune": ("model", "data", "finetune"),
                   "search_final": ("data", "search"), "search_short": ("data", "search"), "export": (),
                   "report": ("model", "data", "eval")}
_LEGACY_SECTIONS = {**_STAGE_SECTIONS, "report": ("eval",)}


def _section(config: Any, name: str) -> dict:
    if name not in config:
        return {}
    section = normalised(config[name].to_dict())
    for key, default in _LATER_DEFAULTS.get(name, {}).items():
        if section.get(key) == default:
            section.pop(key)
    for key in _NOT_FINGERPRINTED.get(name, ()):
        section.pop(key, None)
    return section


def _comparable(fingerprint: dict) -> dict:
    """A stored stage fingerprint without the settings `_NOT_FINGERPRINTED` (older workdirs recorded some)."""
    return {name: ({k: v for k, v in section.items() if k not in _NOT_FINGERPRINTED.get(name, ())}
                   if isinstance(section, dict) else section) for name, section in fingerprint.items()}


def _check_targets(pipeline: Any, original: int) -> None:
    """The pipeline's lengths against each other and the model's native length, before any stage runs."""
    first, final, short = int(pipeline.first_target), int(pipeline.final_target), int(pipeline.short_length or 0)
    if first <= original:
        raise ConfigError(f"pipeline.first_target={first} must exceed the model's native length {original} (the "
                          f"first search extends it); e.g. --config.pipeline.first_target={2 * original}")
    if final < first:
        raise ConfigError(f"pipeline.final_target={final} is below pipeline.first_target={first}; set it to at "
                          f"least {first}")
    if short < 0 or short > original:
        raise ConfigError(f"pipeline.short_length={short} must be in [0, {original}] (0: the native length)")
    from longrope_jax.eval import ruler
    from longrope_jax.settings import as_list

    if int(pipeline.get("report_passkey_trials", 0)) < 0:
        raise ConfigError(f"pipeline.report_passkey_trials={pipeline.report_passkey_trials} must be >= 0 (0: none)")
    for task in as_list(pipeline.get("report_ruler_tasks", ())):
        ruler.task_args(task)  # an unknown task fails here, not after the searches
    if as_list(pipeline.get("report_ruler_tasks", ())) and int(pipeline.get("report_ruler_samples", 1)) < 1:
        raise ConfigError(f"pipeline.report_ruler_samples={pipeline.report_ruler_samples} must be >= 1")


class Pipeline:
    def __init__(self, config: JobSettings | Any, workdir: str | Path):
        """config: the `JobSettings` a CLI parsed, or an ml_collections config (parsed here, before anything
        is written)."""
        config = parse_job(config)
        self.config, self.workdir = config, Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.manifest = read_json(self.workdir / MANIFEST, default={"stages": {}})
        self._bundle = None
        self._original = 0  # the base model's native length, known once run() has loaded it
        stages = [s.strip() for s in (config.pipeline.stages.split(",") if isinstance(config.pipeline.stages, str)
                                      else config.pipeline.stages)]
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"unknown pipeline stages {unknown}; choose from {', '.join(STAGES)}")
        self.enabled = [s for s in STAGES if s in stages]

    # ------------------------------------------------------------------ bookkeeping
    def _search_target(self, stage: str, base_factors: str = ""):
        """What a search stage extends to, decided here and handed to the search (`SearchTarget`): every stage
        uses the final context's attention scale, the final search builds on the first one's λ, none is judged
        on held-out text (the report does that)."""
        from longrope_jax.search.job import SearchTarget

        p = self.config.pipeline
        first, final = int(p.first_target), int(p.final_target)
        if stage == "search_long":
            return SearchTarget(first, final)
        if stage == "search_final":
            return SearchTarget(final, final, base_factors, first if base_factors else 0)
        return SearchTarget(int(p.short_length or self._original), final)

    def _stage_config(self, stage: str, base_factors: str = "") -> JobSettings:
        """The settings a stage runs with: the user's, with the ones the pipeline decides for that stage (the
        fine-tune's factors and length; the short search's space, bound and budget). A search's target is not
        here: it is a `SearchTarget` (`_search_target`)."""
        config, p = self.config, self.config.pipeline
        if stage == "finetune":
            return config.replace(finetune=config.finetune.replace(factors=base_factors,
                                                                   target_length=int(p.final_target)))
        if stage == "search_short":
            return config.replace(search=config.search.replace(
                space="dim_mono", upper=float(p.short_upper), evo_scale=float(p.short_evo_scale), search_n_hat=False))
        return config

    def _fingerprint(self, stage: str, inputs: dict) -> dict:
        """What the stage uses and nothing else: the sections it reads, as it runs them (a field the pipeline sets
        for the stage is the value it sets, so the user's value of it cannot make a finished stage look changed),
        its input files' digests, and the final length where the stage writes it."""
        base_factors = "(in inputs)" if inputs.get("factors") else ""
        config = self._stage_config(stage, base_factors)
        uses = {name: _section(config, name) for name in _STAGE_SECTIONS[stage]}
        if stage.startswith("search_"):  # the search's own target fields are replaced by the stage's target
            uses["search"].update(self._search_target(stage, base_factors).settings())
        for name, key in (("search", "base_factors"), ("finetune", "factors")):
            uses.get(name, {}).pop(key, None)  # a path inside the workdir; its contents are in `inputs`
        if stage in ("export", "search_final", "finetune", "report"):
            uses["final_target"] = int(self.config.pipeline.final_target)
        if stage == "report":
            uses["retrieval"] = {k: self.config.pipeline.get(k) for k in REPORT_SETTINGS if k in self.config.pipeline}
        return normalised({"version": FINGERPRINT_VERSION, **uses, "inputs": inputs})

    def _legacy_fingerprint(self, stage: str, inputs: dict) -> dict:
        """How workdirs written before FINGERPRINT_VERSION 2 fingerprinted a stage (the whole pipeline section and
        the user's sections), so their finished stages still match."""
        return normalised({"pipeline": _section(self.config, "pipeline"),
                           **{s: _section(self.config, s) for s in _LEGACY_SECTIONS[stage]}, "inputs": inputs})

    def _run_stage(self, stage: str, inputs: dict, body: Callable[[Path], dict]) -> dict:
        entry = self.manifest["stages"].get(stage)
        fingerprint = self._fingerprint(stage, inputs)
        stored = _comparable(entry.get("fingerprint") or {}) if entry else None
        current = fingerprint  # what `stored` is compared with, in its own format
        if stored is not None and "version" not in stored:
            current = self._legacy_fingerprint(stage, inputs)
            if stored == current:  # an older workdir's record of these same settings
                stored, current = fingerprint, fingerprint
                entry = {**entry, "fingerprint": fingerprint}
                self.manifest["stages"][stage] = entry
        if entry and entry.get("status") == "done":
            if stored == fingerprint:
                print(f"[{stage}] already done, skipping")
                return entry["outputs"]
            refuse_changed(f"stage {stage} already finished in {self.workdir}", stored, current,
                           f"use a new --workdir, or delete {self.workdir / stage} and its manifest entry to redo it")
        if entry:
            refuse_changed(f"stage {stage} was started in {self.workdir}", stored, current,
                           f"use a new --workdir, or delete {self.workdir / stage} and its manifest entry")
        self.manifest["stages"][stage] = {"status": "running", "fingerprint": fingerprint}
        write_json_atomic(self.workdir / MANIFEST, self.manifest)
        print(f"[{stage}] {'resuming where it stopped' if entry else 'running'}", flush=True)
        start = time.time()
        try:
            outputs = body(self.workdir / stage)
        except ConfigError:
            # Bad settings found inside the stage: forget the attempt, so the corrected command starts it afresh
            # instead of being refused for "different settings".
            if entry is None:
                self.manifest["stages"].pop(stage, None)
            else:
                self.manifest["stages"][stage] = entry
            write_json_atomic(self.workdir / MANIFEST, self.manifest)
            raise
        seconds = time.time() - start + float((entry or {}).get("seconds", 0))
        self.manifest["stages"][stage] = {"status": "done", "fingerprint": fingerprint, "outputs": outputs,
                                          "seconds": seconds}
        write_json_atomic(self.workdir / MANIFEST, self.manifest)
        print(f"[{stage}] done in {seconds:.0f} s: {_key_figure(outputs)}; outputs in {self.workdir / stage}",
              flush=True)
        return outputs

    def _base_bundle(self):
        if self._bundle is None:
            from longrope_jax.loading import load_from_config
            self._bundle = load_from_config(self.config.model)
        return self._bundle

    @staticmethod
    def _model_dir_bundle(model_dir: str, model_section: Any):
        from longrope_jax.loading import load_model, model_overrides
        from longrope_jax.tokenizer import load_tokenizer
        model, cfg = load_model(model_dir, **model_overrides(model_section))
        return model, cfg, load_tokenizer(model_dir)

    # ------------------------------------------------------------------ stages
    def run(self) -> dict:
        from longrope_jax.search.job import run_search
        from longrope_jax.train.job import run_finetune

        p, outputs = self.config.pipeline, {}
        first, final = int(p.first_target), int(p.final_target)
        base_model, base_cfg, _ = self._base_bundle()
        original = base_cfg.rope.original_length
        self._original = original
        _check_targets(p, original)
        long_factors = None  # path of the current long rope_scaling.json
        if "search_long" in self.enabled:
            out = self._run_stage("search_long", {}, lambda d: {"rope_scaling": str(d / "rope_scaling.json"),
                                                                 **_summary(run_search(
                                                                     self.config, d, self._bundle,
                                                                     self._search_target("search_long")))})
            long_factors = out["rope_scaling"]
        model_dir = None
        if "finetune" in self.enabled:
            if long_factors is None:
                raise ConfigError("stage finetune needs search_long (the factors to train with)")
            config = self._stage_config("finetune", long_factors)
            out = self._run_stage("finetune", {"factors": _digest(long_factors)},
                                  lambda d: {"model_dir": str(d / "model"), **_summary(run_finetune(config, d,
                                                                                                    self._bundle))})
            model_dir = out["model_dir"]
        bundle = self._model_dir_bundle(model_dir, self.config.model) if model_dir else self._base_bundle()
        if "search_final" in self.enabled and final > first:
            goal = self._search_target("search_final", long_factors or "")
            out = self._run_stage("search_final", {"factors": _digest(long_factors), "model": model_dir},
                                  lambda d: {"rope_scaling": str(d / "rope_scaling.json"),
                                             **_summary(run_search(self.config, d, bundle, goal))})
            long_factors = out["rope_scaling"]
        short_factors = None
        if "search_short" in self.enabled:
            out = self._run_stage("search_short", {"model": model_dir},
                                  lambda d: {"rope_scaling": str(d / "rope_scaling.json"),
                                             **_summary(run_search(self._stage_config("search_short"), d, bundle,
                                                                   self._search_target("search_short")))})
            short_factors = out["rope_scaling"]
        if "export" in self.enabled:
            if long_factors is None:
                raise ConfigError("stage export needs searched long factors (enable search_long)")
            outputs["export"] = self._run_stage(
                "export", {"long": _digest(long_factors), "short": _digest(short_factors), "model": model_dir},
                lambda d: _export(bundle, long_factors, short_factors, final, d))
        if "report" in self.enabled and "export" in outputs:
            outputs["report"] = self._run_stage("report", {"export": outputs["export"]},
                                                lambda d: _report(self.config, self._base_bundle(),
                                                                  outputs["export"], self.manifest, d))
        return outputs


def _key_figure(outputs: dict) -> str:
    """The one number a finished stage is judged by, for its summary line."""
    if "best_perplexity" in outputs:
        return f"best perplexity {outputs['best_perplexity']:.3f} at {outputs.get('target_length')} tokens"
    if outputs.get("last_loss") is not None and outputs.get("first_loss") is not None:
        return f"{outputs.get('steps')} steps, loss {outputs.get('first_loss'):.4f} -> {outputs['last_loss']:.4f}"
    return ", ".join(f"{k}: {v}" for k, v in outputs.items() if isinstance(v, (int, float, str)))[:200] or "done"


def _digest(path: str | None) -> str | None:
    if not path:
        return None
    from longrope_jax.search.fitness import fingerprint
    return fingerprint(Path(path).read_text())


def _summary(summary: dict) -> dict:
    keep = ("best_perplexity", "target_length", "budget", "steps", "first_loss", "last_loss")
    return {k: summary[k] for k in keep if k in summary}


def _export(bundle, long_path: str, short_path: str | None, final: int, out: Path) -> dict:
    from longrope_jax.checkpoint import save_model_dir
    from longrope_jax.convert.hf import save_hf_dir
    from longrope_jax.eval.methods import read_factors
    from longrope_jax.model.state import model_params
    from longrope_jax.rope import longrope_spec

    model, cfg, tokenizer = bundle
    long = read_factors(long_path)
    short = read_factors(short_path)["long_factor"] if short_path else None
    base = cfg.rope
    original = base.original_length
    if base.rope_type == "longrope":  # a fine-tuned model directory already carries λ1
        base = base.replace(rope_type="default", short_factor=None, long_factor=None, n_hat=0,
                            original_max_position_embeddings=None, max_position_embeddings=original)
    spec = longrope_spec(base, long["long_factor"], short, max_position_embeddings=final,
                         attention_factor=long.get("attention_factor"), n_hat=int(long.get("n_hat", 0)))
    final_cfg = cfg.replace(rope=spec)
    params = model_params(model)
    hf_dir = save_hf_dir(final_cfg, params, out / "hf", tokenizer=tokenizer)
    orbax_dir = save_model_dir(final_cfg, params, out / "orbax", tokenizer=tokenizer)
    write_json_atomic(out / "rope_scaling.json", spec.to_hf())
    return {"hf_dir": str(hf_dir), "orbax_dir": str(orbax_dir), "rope_scaling": str(out / "rope_scaling.json")}


def _report(config, base_bundle, export: dict, manifest: dict, out: Path) -> dict:
    """Perplexity vs length for the base model and, on the extended model's weights, none / PI / YaRN / the
    result; factor plot and report.md."""
    from longrope_jax.data.documents import first_documents
    from longrope_jax.data.sources import load_token_documents, text_source
    from longrope_jax.eval import methods as rope_methods
    from longrope_jax.eval import plots
    from longrope_jax.eval.perplexity import perplexity_table
    from longrope_jax.settings import as_list
    from longrope_jax.loading import load_model, model_overrides
    from longrope_jax.rope import equivalent_factors

    model, cfg, tokenizer = base_bundle
    result_model, result_cfg = load_model(export["orbax_dir"], **model_overrides(config.model))
    docs = load_token_documents(text_source(config.data, config.eval.split), tokenizer)
    table: dict[str, dict[int, float]] = {}
    for length in [int(v) for v in as_list(config.eval.lengths)]:
        tokens, names = first_documents(docs, length, int(config.eval.documents), bool(config.data.add_bos),
                                        cfg.bos_token_id)
        # Like with like: the closed forms and the result on the extended model's own weights (fine-tuned, when a
        # stage fine-tuned), plus the base model as it was given.
        specs = rope_methods.with_served_spec(
            {**{m: rope_methods.method_spec(cfg.rope, m, length) for m in ("none", "pi", "yarn")},
             "longrope (result)": result_cfg.rope}, "longrope (result)", "longrope (result, served without n_hat)")
        measured = {**perplexity_table(model, tokens, {"base model (none)": cfg.rope}),
                    **perplexity_table(result_model, tokens, specs)}
        for m, value in measured.items():
            table.setdefault(m, {})[length] = value
    out.mkdir(parents=True, exist_ok=True)
    original = cfg.rope.original_length
    plots.plot_perplexity_vs_length(table, out / "perplexity_vs_length.png", original)
    final = result_cfg.rope.max_position_embeddings
    factors = {m: equivalent_factors(rope_methods.method_spec(cfg.rope, m, final), final) for m in ("pi", "yarn")}
    factors["longrope long"] = np.asarray(result_cfg.rope.long_factor)
    factors["longrope short"] = np.asarray(result_cfg.rope.short_factor)
    plots.plot_factors(factors, out / "factors.png", title=f"Factors for {final} tokens")
    lengths = sorted({l for by in table.values() for l in by})
    rows = [f"| {m} | " + " | ".join(f"{by[l]:.2f}" for l in lengths) + " |" for m, by in table.items()]
    from longrope_jax.eval.report_retrieval import retrieval_markdown, retrieval_table
    p = config.pipeline
    retrieval_lengths = sorted({original, final})
    retrieval = retrieval_table(result_model, tokenizer, result_cfg.rope, retrieval_lengths,
                                int(p.get("report_passkey_trials", 0)), as_list(p.get("report_ruler_tasks", ())),
                                int(p.get("report_ruler_samples", 1)), int(config.eval.seed),
                                bool(config.data.add_bos))
    stages = "\n".join(f"- {name}: {entry['status']}, {entry.get('seconds', 0):.0f} s"
                       for name, entry in manifest["stages"].items() if name != "report")  # this one is running
    report = (f"# LongRoPE extension report: {config.name}\n\n"
              f"Extended to {final} tokens (original {original}).\n\n## Stages\n{stages}\n\n"
              f"## Perplexity ({config.eval.split} documents: {', '.join(names)})\n\n"
              f"none / pi / yarn and the result run on the extended model's weights; 'base model (none)' is the "
              f"model as given, with its own RoPE.\n\n"
              f"| method | " + " | ".join(str(l) for l in lengths) + " |\n|---|" + "---|" * len(lengths) + "\n"
              + "\n".join(rows) + "\n\n![perplexity](perplexity_vs_length.png)\n\n"
              "## Retrieval (the result, served with its short/long rule)\n\n"
              + retrieval_markdown(retrieval, retrieval_lengths) + "\n![factors](factors.png)\n\n"
              f"HF export: `{export['hf_dir']}` (rope_scaling: `{export['rope_scaling']}`)\n")
    write_text_atomic(out / "report.md", report)
    write_json_atomic(out / "perplexity.json", {m: {str(l): v for l, v in by.items()} for m, by in table.items()})
    write_json_atomic(out / "retrieval.json", retrieval)
    return {"report": str(out / "report.md"), "perplexity": {m: {str(l): v for l, v in by.items()}
                                                              for m, by in table.items()}, "retrieval": retrieval}
