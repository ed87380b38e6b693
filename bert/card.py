"""Model cards: the README.md written into every exported model folder and every fine-tuned `best/` folder.

A card is what the Hugging Face Hub shows as the model's page: YAML metadata (library, pipeline, tags), then
how the model was made, from the facts the run recorded (`provenance`, saved in every checkpoint's meta.json):
architecture and size, tokenizer, the prepared corpus's counts, steps, tokens, time, hardware, precision,
the last evaluation, the command and config that reproduce it, and how to load it. `bert glue` adds its
table to the card of the model it evaluated (`add_glue_table`), between markers, replacing an older one.
"""

from __future__ import annotations

import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

GLUE_START, GLUE_END = "<!-- bert glue: start -->", "<!-- bert glue: end -->"
_GENERATED = "<!-- written by bertsmith -->"


def provenance(accelerator: Any, prepared: Path | None, data_meta: dict[str, Any] | None) -> dict[str, Any]:
    """What a card says about where and how a run ran: the command, the hardware, the precision, the data."""
    import torch

    import bert

    device = accelerator.device
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{cpu_name()} ({torch.get_num_threads()} threads)"
    return {
        "command": " ".join(["bert", *sys.argv[1:]])
        if Path(sys.argv[0]).name == "bert"
        else " ".join(sys.argv),
        "hardware": f"{accelerator.num_processes} x {hardware}",
        "precision": accelerator.mixed_precision,
        "data": {
            "prepared": str(prepared) if prepared else None,
            "counts": (data_meta or {}).get("counts"),
            "input": (data_meta or {}).get("input"),
        },
        "versions": {
            "bertsmith": bert.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def _num(value: Any) -> str:
    """A count with thousands separators, or '?' when it was not recorded."""
    return f"{value:,}" if isinstance(value, (int, float)) else "?"


def _metadata(fields: dict[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(fields, sort_keys=False).strip() + "\n---\n" + _GENERATED + "\n"


def _shape(model: dict[str, Any], parameters: int | None) -> str:
    layers = "pre-LayerNorm" if model.get("pre_layer_norm") else "post-LayerNorm (as BERT)"
    size = f", {parameters / 1e6:.1f}M parameters" if parameters else ""
    return (
        f"BERT L{model['num_hidden_layers']}/H{model['hidden_size']}/A{model['num_attention_heads']}, feed-forward "
        f"{model['intermediate_size']}, {model['max_position_embeddings']} positions, {layers}{size}; vocabulary "
        f"{model['vocab_size']} tokens"
    )


def _data_lines(config: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    data = config.get("data", {})
    counts = (facts.get("data") or {}).get("counts") or {}
    train = counts.get("train") or {}
    lines = [f"- Corpus: {', '.join(map(str, data.get('corpus', []))) or 'unknown'}"]
    if counts:
        lines.append(
            f"- Prepared: {_num(counts.get('documents'))} documents, {_num(counts.get('sentences'))} "
            f"sentences; {_num(train.get('instances'))} training sequences ({_num(train.get('tokens'))} tokens) "
            f"of at most {data.get('max_seq_length')} tokens"
        )
    tokenizer = (
        data.get("tokenizer") or f"WordPiece trained on the corpus (at most {data.get('vocab_size')} tokens)"
    )
    lines.append(f"- Tokenizer: {tokenizer}; {'uncased' if data.get('lowercase', True) else 'cased'}")
    masking = "whole-word" if data.get("whole_word_mask") else "token"
    lines.append(
        f"- Objectives: masked language modelling ({data.get('masked_lm_prob')} of tokens, {masking} masking, "
        f"at most {data.get('max_predictions_per_seq')} a sequence)"
        + (" and next sentence prediction" if data.get("nsp", True) else "")
    )
    return lines


def export_card(meta: dict[str, Any], model: Any, name: str | None = None) -> str:
    """The card of an exported model: `meta` (a checkpoint's, or the same facts at a run's end) with the
    exported model's own config (its vocabulary without the padding rows) and parameter count."""
    config = {**meta.get("config", {}), "model": model.config.to_dict()}
    parameters = sum(p.numel() for p in model.parameters())
    return pretraining_card({**meta, "config": config}, parameters, name)


def pretraining_card(meta: dict[str, Any], parameters: int | None = None, name: str | None = None) -> str:
    """The card of a pretrained model, from a checkpoint's meta.json (or the same facts at a run's end)."""
    config = meta.get("config", {})
    model, train, optimizer = config.get("model", {}), config.get("train", {}), config.get("optimizer", {})
    facts = meta.get("provenance") or {}
    counters = meta.get("counters", {})
    pre_ln = bool(model.get("pre_layer_norm"))
    title = name or Path(train.get("output_dir", "model")).name
    lines = [
        _metadata(
            {
                "library_name": "bertsmith" if pre_ln else "transformers",
                "pipeline_tag": "fill-mask",
                "tags": ["bert", "bertsmith", "fill-mask", "masked-language-modeling"],
            }
        ),
        f"# {title}",
        "",
        f"A BERT encoder pretrained with bertsmith on masked language modelling"
        f"{' and next sentence prediction' if config.get('data', {}).get('nsp', True) else ''}.",
        "",
        "## Model",
        "",
        f"- {_shape(model, parameters)}",
        f"- Checkpoint: step {meta.get('step', '?')}"
        + (f", run {meta['run_id']}" if meta.get("run_id") else ""),
        "",
        "## Data",
        "",
        *_data_lines(config, facts),
        "",
        "## Training",
        "",
        f"- Steps: {_num(meta.get('step'))}; sequences: {_num(counters.get('samples'))}; tokens: "
        f"{_num(counters.get('tokens'))}; training time: {counters.get('train_seconds', 0) / 3600:.2f} h",
        f"- Batch: {train.get('batch_size')} per device x {train.get('gradient_accumulation_steps')} accumulation x "
        f"{meta.get('num_processes', 1)} process(es); optimizer {optimizer.get('name')}, peak lr "
        f"{optimizer.get('lr')}",
        f"- Hardware: {facts.get('hardware', 'not recorded')}; precision: {facts.get('precision', 'not recorded')}",
        *_runs_line(meta.get("runs")),
        "",
        "## Evaluation (held-out split of the corpus)",
        "",
        *_eval_lines(meta.get("eval") or {}),
        "",
        GLUE_START,
        GLUE_END,
        "",
        "## How to load",
        "",
        *_load_lines(pre_ln),
        "",
        "## How to reproduce",
        "",
        "```bash",
        facts.get("command") or "bert pretrain config.yaml",
        "```",
        "",
        "<details><summary>The resolved config</summary>",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).strip(),
        "```",
        "</details>",
        "",
        f"Versions: {json.dumps(facts.get('versions', {}))}",
        "",
    ]
    return "\n".join(lines)


def _runs_line(runs: dict[str, Any] | None) -> list[str]:
    if not runs:
        return []
    paths = ", ".join(runs.get("fast_paths") or []) or "none"
    return [
        f"- Computed with: attention {runs.get('attention')}; fast paths: {paths}; compile {runs.get('compile')}"
    ]


def _eval_lines(metrics: dict[str, Any]) -> list[str]:
    if not metrics:
        return ["- Not evaluated."]
    names = {
        "mlm_loss": "MLM loss",
        "mlm_accuracy": "MLM accuracy",
        "mlm_perplexity": "MLM perplexity",
        "nsp_loss": "NSP loss",
        "nsp_accuracy": "NSP accuracy",
    }
    lines = [f"At step {metrics.get('step', '?')}:", ""]
    lines += [f"- {label}: {metrics[key]:.4f}" for key, label in names.items() if key in metrics]
    return lines


def _load_lines(pre_ln: bool) -> list[str]:
    if pre_ln:
        return [
            "This model is pre-LayerNorm. transformers' BERT is post-LayerNorm and would compute something",
            "else, so config.json names the model type `bertsmith-preln`: load it with bertsmith.",
            "",
            "```python",
            "from bert import BertForPreTraining",
            'model = BertForPreTraining.from_pretrained("path/to/this/folder")',
            "```",
        ]
    return [
        "```python",
        "from transformers import AutoTokenizer, BertForPreTraining",
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        'model = BertForPreTraining.from_pretrained("path/to/this/folder")',
        "```",
        "",
        "Fine-tune it: `bert finetune configs/finetune/mrpc.yaml model_path=path/to/this/folder`, or on every",
        "GLUE task: `bert glue path/to/this/folder --data path/to/glue`.",
    ]


def finetuned_card(task: str, labels: list[str] | None, result: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The card of a fine-tuned `best/` folder: the task, the dev metrics of the kept epoch, the recipe."""
    train, optimizer = cfg.get("train", {}), cfg.get("optimizer", {})
    dev = result.get("dev", {})
    lines = [
        _metadata(
            {
                "library_name": "transformers",
                "pipeline_tag": "text-classification",
                "tags": ["bert", "bertsmith", task],
                "base_model": str(cfg.get("model_path", "")),
            }
        ),
        f"# {Path(train.get('output_dir', task)).name} ({task})",
        "",
        f"A sequence-pair {'regression' if labels is None else 'classifier'} fine-tuned with bertsmith from "
        f"`{cfg.get('model_path')}` on {task}" + (f" (labels: {', '.join(labels)})." if labels else "."),
        "",
        "## Dev results",
        "",
        f"Epoch {result.get('epoch', '?')} of {train.get('epochs')}, seed {result.get('seed', '?')}:",
        "",
        *[f"- {split} {metric}: {value:.4f}" for split, m in dev.items() for metric, value in m.items()],
        "",
        "## Recipe",
        "",
        f"- Batch {train.get('global_batch_size')} sequences a step, lr {optimizer.get('lr')}, "
        f"{train.get('epochs')} epochs"
        + (f" (at most {train['max_steps']} steps)" if train.get("max_steps") else "")
        + f", sequences of at most {train.get('max_length')} tokens",
        f"- Training pairs: {result.get('train_examples', '?')}"
        + (
            f" (a subsample of {cfg['task']['max_train_examples']})"
            if cfg.get("task", {}).get("max_train_examples")
            else ""
        ),
        "",
        "## How to load",
        "",
        "```python",
        "from transformers import AutoTokenizer, BertForSequenceClassification",
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        'model = BertForSequenceClassification.from_pretrained("path/to/this/folder")',
        "```",
        "",
    ]
    return "\n".join(lines)


def add_glue_table(folder: str | Path, table: str) -> bool:
    """Put `bert glue`'s table into the card of the model folder it evaluated (replacing an older table);
    False when the folder has no card written by this project (a card of someone else is left alone)."""
    from bert import fs

    card = Path(folder) / "README.md"
    try:
        text = card.read_text()
    except OSError:
        return False
    if _GENERATED not in text or GLUE_START not in text:
        return False
    section = f"{GLUE_START}\n## GLUE (dev sets, `bert glue`)\n\n{table}\n{GLUE_END}"
    pattern = re.compile(re.escape(GLUE_START) + ".*?" + re.escape(GLUE_END), re.S)
    fs.atomic_write_text(card, pattern.sub(lambda _: section, text, count=1))
    return True
