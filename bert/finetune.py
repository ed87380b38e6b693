"""Sentence-pair fine-tuning (`bert finetune`) and scoring of a saved model (`bert evaluate`).

This file owns:
- the tokenizer of a model folder (`load_tokenizer`: tokenizer.json, or vocab.txt with tokenizer_config.json's
  do_lower_case; no `transformers` needed) and `encode_split`: pairs tokenised once, in batch, truncated
  longest-first, and cached on disk by content;
- batching: `LengthGroupedBatchSampler` (shuffle, cut into mega-batches of `mega_batch` batches, sort each by
  length, shuffle the batches; seeded by (seed, epoch)) and `collate` (dynamic padding to the longest row);
- `finetune(cfg)`: one loop per seed that reads top to bottom (train an epoch, evaluate, keep the best model
  by the task's metric), then test predictions, metrics JSON, and mean +- std over seeds;
- `evaluate_saved(model_path, cfg, split, output)`: the same evaluation for a saved model.

Batches follow the attention-mask rule of the project: `attention_mask` is 1 for real tokens and 0 for padding;
with `attn_implementation: unpadded` the model drops the padding before the embeddings, so the padding added by
`collate` costs nothing but the copy. Only the main process prints and writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from bert.config import FinetuneConfig, save_config
from bert.errors import UserError
from bert.glue_metrics import compute_metrics
from bert.tasks import PairExamples, Task, load_task

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
"""Files copied beside a saved model so that the folder loads on its own (here and in `transformers`)."""


# ------------------------------------------------------------------------------------------- tokenizer


def tokenizer_folder(model_path: str | Path) -> Path:
    """The folder holding the model's tokenizer: the model folder itself, or its `tokenizer/` sub-folder."""
    for folder in (Path(model_path), Path(model_path) / "tokenizer"):
        if (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file():
            return folder
    raise UserError(f"{model_path}: no tokenizer in the model folder (tokenizer.json or vocab.txt)")


def load_tokenizer(model_path: str | Path, max_length: int) -> Tokenizer:
    """A fast tokenizer for pairs: `[CLS] a [SEP] b [SEP]`, segment ids 0/1, truncated longest-first."""
    from tokenizers import normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    folder = tokenizer_folder(model_path)
    if (folder / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    else:
        settings = {}
        if (folder / "tokenizer_config.json").is_file():
            settings = json.loads((folder / "tokenizer_config.json").read_text())
        lowercase = bool(settings.get("do_lower_case", True))
        tokenizer = Tokenizer(WordPiece.from_file(str(folder / "vocab.txt"), unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=settings.get("strip_accents"),
            lowercase=lowercase,
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls_id is None or sep_id is None or tokenizer.token_to_id("[PAD]") is None:
        raise UserError(f"{folder}: the tokenizer has no [CLS], [SEP] or [PAD] token")
    # Always the BERT pair template: a tokenizer trained by this project may not carry one, and the ids are
    # looked up, never assumed.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.no_padding()  # a saved tokenizer.json may pad to a fixed length; we pad per batch
    tokenizer.enable_truncation(max_length, strategy="longest_first")  # counts the special tokens
    return tokenizer


@dataclass
class EncodedSplit:
    """A tokenised split: ragged rows stored flat (`offsets` (N + 1,)) plus labels."""

    input_ids: np.ndarray  # (total tokens,) int32
    token_type_ids: np.ndarray  # (total tokens,) int8
    offsets: np.ndarray  # (N + 1,) int64; row i is [offsets[i], offsets[i + 1])
    labels: np.ndarray | None  # (N,) int64 or float32

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def encode_split(
    tokenizer: Tokenizer, examples: PairExamples, max_length: int, cache_dir: str | None = None
) -> EncodedSplit:
    """Tokenise every pair once (batch encode, in Rust threads); reuse a cached result with the same content."""
    cache = None
    if cache_dir:
        digest = hashlib.sha1(tokenizer.to_str().encode())
        digest.update(f"{max_length}\0".encode())
        for a, b in zip(examples.text_a, examples.text_b):
            digest.update(f"{a}\0{b}\0".encode())
        cache = Path(cache_dir) / f"{digest.hexdigest()[:20]}.npz"
        if cache.is_file():
            data = np.load(cache)
            return EncodedSplit(data["input_ids"], data["token_type_ids"], data["offsets"], examples.labels)
    encodings = tokenizer.encode_batch(list(zip(examples.text_a, examples.text_b)))
    offsets = np.zeros(len(encodings) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(e.ids) for e in encodings])
    input_ids = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int32, count=int(offsets[-1]))
    type_ids = np.fromiter((t for e in encodings for t in e.type_ids), dtype=np.int8, count=int(offsets[-1]))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        temp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(temp, input_ids=input_ids, token_type_ids=type_ids, offsets=offsets)
        os.replace(temp, cache)  # atomic: a concurrent reader sees all or nothing
    return EncodedSplit(input_ids, type_ids, offsets, examples.labels)


# --------------------------------------------------------------------------------------------- batching


class PairDataset(torch.utils.data.Dataset):
    """Row i of an `EncodedSplit` as numpy arrays; `collate` pads them into a batch."""

    def __init__(self, encoded: EncodedSplit) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, np.ndarray, float]:
        e = self.encoded
        start, end = e.offsets[i], e.offsets[i + 1]
        label = e.labels[i] if e.labels is not None else 0
        return i, e.input_ids[start:end], e.token_type_ids[start:end], label


class LengthGroupedBatchSampler:
    """Batches of similar-length rows in random order, a pure function of (seed, epoch).

    Shuffle all rows, cut them into mega-batches of `mega_batch * batch_size`, sort each mega-batch by length
    and cut it into batches, then shuffle the batches. Padding shrinks to almost nothing while every batch is
    still a random draw (only its neighbours in length are correlated). `group=False` gives plain random batches;
    `shuffle=False` gives batches in length order (evaluation: the order does not matter there).
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int = 0,
        mega_batch: int = 50,
        group: bool = True,
        shuffle: bool = True,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch = mega_batch
        self.group = group
        self.shuffle = shuffle
        self.drop_last = False  # read by Accelerate when it shards the batches over processes
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        n, size = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            yield from (order[i : i + size].tolist() for i in range(0, n, size))
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)
        if not self.group:
            yield from (order[i : i + size].tolist() for i in range(0, n, size))
            return
        chunk = size * max(self.mega_batch, 1)
        batches = []
        for start in range(0, n, chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(-self.lengths[part], kind="stable")]
            batches.extend(part[i : i + size] for i in range(0, len(part), size))
        for b in rng.permutation(len(batches)):
            yield batches[b].tolist()


class Collator:
    """Pads a list of rows to the longest (optionally rounded up) and returns the model's batch dict."""

    def __init__(self, pad_token_id: int, regression: bool, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.regression = regression
        self.multiple = pad_to_multiple_of

    def __call__(self, rows: list[tuple[int, np.ndarray, np.ndarray, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(r[1]) for r in rows)
        if self.multiple:
            longest = -(-longest // self.multiple) * self.multiple
        input_ids = np.full((len(rows), longest), self.pad_token_id, dtype=np.int64)  # (B, T)
        token_type_ids = np.zeros((len(rows), longest), dtype=np.int64)  # (B, T)
        attention_mask = np.zeros((len(rows), longest), dtype=np.int64)  # (B, T) 1 = real, 0 = pad
        for row, (_, ids, types, _) in enumerate(rows):
            input_ids[row, : len(ids)] = ids
            token_type_ids[row, : len(ids)] = types
            attention_mask[row, : len(ids)] = 1
        labels = np.asarray([r[3] for r in rows], dtype=np.float32 if self.regression else np.int64)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "token_type_ids": torch.from_numpy(token_type_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "labels": torch.from_numpy(labels),  # (B,)
            "index": torch.tensor([r[0] for r in rows]),  # (B,) row of the split, to undo the length order
        }


def make_loader(
    encoded: EncodedSplit, sampler: LengthGroupedBatchSampler, collator: Collator, num_workers: int = 0
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        PairDataset(encoded), batch_sampler=sampler, collate_fn=collator, num_workers=num_workers
    )


# ------------------------------------------------------------------------------------------------ model


def load_model(model_path: str | Path, task: Task, attn_implementation: str | None) -> torch.nn.Module:
    """A sequence classifier from a model folder, with the task's output count and problem type."""
    import warnings

    from bert.model import BertForSequenceClassification

    overrides: dict[str, Any] = {
        "num_labels": task.num_labels,
        "problem_type": "regression" if task.is_regression else "single_label_classification",
    }
    if attn_implementation is not None:
        overrides["attn_implementation"] = attn_implementation
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = BertForSequenceClassification.from_pretrained(model_path, **overrides)
    for warning in caught:
        # A pretrained encoder has no classifier yet: that one is expected, anything else is worth seeing.
        text = str(warning.message)
        missing = text.rpartition("newly initialised: ")[2].split(", ")
        if not all(k.startswith("classifier.") for k in missing):
            warnings.warn(text, stacklevel=2)
    return model


def resolve_model_path(path: str | Path, output_dir: Path, write: bool = True) -> Path:
    """A folder with config.json: the path itself, a run folder's `export/`, or a training checkpoint
    (a step folder, or a run folder's latest) exported to `<output_dir>/init_model` first."""
    from bert.checkpoint import CHECKPOINTS, MARKER, export_checkpoint

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "export" / "config.json").is_file():
        return path / "export"
    if (path / MARKER).is_file() or (path / CHECKPOINTS).is_dir():
        target = output_dir / "init_model"
        if write:
            export_checkpoint(path, target)
        return target
    raise UserError(f"{path}: not a model folder (no config.json) nor a training checkpoint")


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Cross-entropy over the labels, or mean squared error for regression; computed in fp32."""
    if regression:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())  # logits (B, 1)
    return F.cross_entropy(logits.float(), labels)  # logits (B, C)


def save_model(model: torch.nn.Module, task: Task, model_path: str | Path, folder: Path) -> None:
    """The model in Hugging Face layout with the tokenizer files, and the label names in config.json."""
    temp = folder.parent / f".tmp-{folder.name}"
    if temp.exists():
        shutil.rmtree(temp)
    model.save_pretrained(temp)
    source = tokenizer_folder(model_path)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, temp / name)
    config = json.loads((temp / "config.json").read_text())
    names = task.labels or ["score"]
    config["id2label"] = {str(i): n for i, n in enumerate(names)}
    config["label2id"] = {n: i for i, n in enumerate(names)}
    config["finetuning_task"] = task.name
    config["architectures"] = ["BertForSequenceClassification"]
    (temp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(temp, folder)


# ------------------------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def predict(model: torch.nn.Module, loader: Any, accelerator: Any, size: int) -> np.ndarray:
    """Model outputs for every row of a split, in the split's order: (N, C) logits or (N,) scores."""
    model.eval()
    outputs: np.ndarray | None = None
    for batch in loader:
        logits = model(
            input_ids=batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            attention_mask=batch["attention_mask"],
        ).logits  # (B, C)
        logits, index = accelerator.gather_for_metrics((logits.float(), batch["index"]))
        if outputs is None:
            outputs = np.zeros((size, logits.shape[-1]), dtype=np.float32)
        outputs[index.cpu().numpy()] = logits.cpu().numpy()
    return outputs[:, 0] if outputs.shape[1] == 1 else outputs


def score(task: Task, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics for model outputs (logits or scores) against labels."""
    predictions = outputs if task.is_regression else outputs.argmax(-1)
    return compute_metrics(task.metrics, predictions, labels)


def write_predictions(task: Task, examples: PairExamples, outputs: np.ndarray, path: Path) -> None:
    """GLUE submission style: a header line `index<TAB>prediction`, then one line per row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("index\tprediction\n")
        if task.is_regression:
            for i, value in zip(examples.ids, outputs):
                f.write(f"{i}\t{value:.3f}\n")
        else:
            for i, label in zip(examples.ids, outputs.argmax(-1)):
                f.write(f"{i}\t{task.labels[label]}\n")


# -------------------------------------------------------------------------------------------- the run


def _accelerator(cfg: FinetuneConfig, with_trackers: bool):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from bert.tracking import tracker_setup

    trackers, init_kwargs = ([], {})
    run_name = cfg.logging.run_name or Path(cfg.train.output_dir).name
    if with_trackers:
        trackers, init_kwargs = tracker_setup(cfg.logging, _run_id(cfg), run_name, cfg.train.output_dir)
    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        # batch_size is the global batch: every optimizer step sees batch_size rows, split over processes.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        log_with=trackers or None,
        project_dir=cfg.train.output_dir,
    )
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(cfg.train.num_threads or max(1, len(os.sched_getaffinity(0)) // local))
    return accelerator, trackers, init_kwargs


def _run_id(cfg: FinetuneConfig) -> str:
    return hashlib.sha1(str(Path(cfg.train.output_dir).resolve()).encode()).hexdigest()[:8]


@dataclass
class _Data:
    """The task's tokenised splits, shared by every seed."""

    train: EncodedSplit
    dev: dict[str, EncodedSplit]
    test: dict[str, EncodedSplit]
    test_examples: dict[str, PairExamples]
    pad_token_id: int


def _prepare_data(cfg: FinetuneConfig, task: Task, tokenizer: Tokenizer, need_train: bool = True) -> _Data:
    encode = lambda split: encode_split(  # noqa: E731
        tokenizer, task.read(split), cfg.train.max_length, cfg.train.cache_dir
    )
    test_names = [s for s in task.split_names("test") if cfg.train.predict_test and task.has_split(s)]
    return _Data(
        train=encode("train") if need_train else None,
        dev={s: encode(s) for s in task.split_names("dev")},
        test={s: encode(s) for s in test_names},
        test_examples={s: task.read(s) for s in test_names},
        pad_token_id=tokenizer.token_to_id("[PAD]"),
    )


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune `cfg.model_path` on `cfg.task` once per seed; returns (and writes) every result."""
    if not cfg.model_path:
        raise UserError(
            "model_path is not set (a model folder: this project's export or a Hugging Face BERT)"
        )
    if not Path(cfg.model_path).is_dir():
        raise UserError(f"{cfg.model_path}: model folder not found")
    task = load_task(cfg.task)
    accelerator, trackers, init_kwargs = _accelerator(cfg, with_trackers=True)
    out = Path(cfg.train.output_dir)
    with accelerator.main_process_first():
        model_path = resolve_model_path(cfg.model_path, out, accelerator.is_main_process)
    cfg = dataclasses.replace(cfg, model_path=str(model_path))
    tokenizer = load_tokenizer(cfg.model_path, cfg.train.max_length)
    with accelerator.main_process_first():  # the main process fills the tokenisation cache first
        data = _prepare_data(cfg, task, tokenizer)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        print(
            f"finetune {task.name}: {len(data.train)} train, "
            + ", ".join(f"{len(v)} {k}" for k, v in data.dev.items())
            + (", " + ", ".join(f"{len(v)} {k}" for k, v in data.test.items()) if data.test else "")
            + f" pairs; model {cfg.model_path}; {accelerator.num_processes} process(es) on {accelerator.device}"
        )
    if trackers:
        from bert.tracking import hparams

        accelerator.init_trackers(cfg.logging.project, config=hparams(cfg), init_kwargs=init_kwargs)
    seeds = list(cfg.train.seeds)
    results = []
    for seed in seeds:
        run_dir = out if len(seeds) == 1 else out / f"seed_{seed}"
        prefix = "" if len(seeds) == 1 else f"seed_{seed}/"
        results.append(_train_one_seed(cfg, task, data, accelerator, seed, run_dir, prefix))
    summary = _summarise(task, results)
    if accelerator.is_main_process:
        (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(_table(task, summary))
    accelerator.end_training()
    return summary


def _train_one_seed(
    cfg: FinetuneConfig, task: Task, data: _Data, accelerator: Any, seed: int, run_dir: Path, prefix: str
) -> dict[str, Any]:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from bert.optim import build_optimizer, build_scheduler

    started = time.perf_counter()
    set_seed(seed)
    train_cfg = cfg.train
    model = load_model(cfg.model_path, task, cfg.attn_implementation)
    optimizer = build_optimizer(model, cfg.optimizer)
    sampler = LengthGroupedBatchSampler(
        data.train.lengths, train_cfg.batch_size, seed, train_cfg.mega_batch, group=train_cfg.group_by_length
    )
    collator = Collator(data.pad_token_id, task.is_regression, train_cfg.pad_to_multiple_of)
    train_loader = make_loader(data.train, sampler, collator, train_cfg.num_workers)
    dev_loaders = {
        name: make_loader(
            split,
            LengthGroupedBatchSampler(split.lengths, train_cfg.eval_batch_size, shuffle=False),
            collator,
            train_cfg.num_workers,
        )
        for name, split in data.dev.items()
    }
    total_steps = max(1, math.ceil(train_cfg.epochs * len(sampler)))
    scheduler = build_scheduler(optimizer, cfg.optimizer, total_steps)
    model, optimizer, train_loader, *dev_list = accelerator.prepare(
        model, optimizer, train_loader, *dev_loaders.values()
    )
    dev_loaders = dict(zip(dev_loaders, dev_list))
    main_split = next(iter(dev_loaders))
    best_dir = run_dir / "best"

    step, best, best_epoch, best_state, best_record, history = 0, -math.inf, 0, None, {}, []
    progress = tqdm(
        total=total_steps,
        desc=f"seed {seed}",
        disable=not (accelerator.is_main_process and cfg.logging.progress_bar),
        dynamic_ncols=True,
    )
    epochs = math.ceil(train_cfg.epochs)
    for epoch in range(epochs):
        model.train()
        sampler.set_epoch(epoch)
        loss_sum, loss_count = torch.zeros(()), 0
        for batch in train_loader:
            logits = model(
                input_ids=batch["input_ids"],
                token_type_ids=batch["token_type_ids"],
                attention_mask=batch["attention_mask"],
            ).logits  # (B, C)
            loss = task_loss(logits, batch["labels"], task.is_regression)
            accelerator.backward(loss)
            if cfg.optimizer.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optimizer.max_grad_norm)
            optimizer.step()
            if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the schedule waits too
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_sum += loss.detach().cpu()
            loss_count += 1
            progress.update(1)
            if step % train_cfg.log_every == 0:
                progress.set_postfix(loss=f"{loss_sum.item() / loss_count:.4f}")
                accelerator.log(
                    {f"{prefix}train/loss": loss.item(), f"{prefix}train/lr": scheduler.get_last_lr()[0]},
                    step=step,
                )
            if step >= total_steps:
                break
        last = epoch == epochs - 1 or step >= total_steps
        if not (train_cfg.eval_every_epoch or last):
            continue
        dev_metrics = {
            name: score(task, predict(model, loader, accelerator, len(data.dev[name])), data.dev[name].labels)
            for name, loader in dev_loaders.items()
        }
        record = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum.item() / max(loss_count, 1)}
        record.update({f"{name}/{k}": v for name, m in dev_metrics.items() for k, v in m.items()})
        history.append(record)
        accelerator.log({f"{prefix}{k}": v for k, v in record.items() if k != "step"}, step=step)
        value = dev_metrics[main_split][task.main_metric]
        improved = value > best or best_state is None
        if improved:
            best, best_epoch, best_record = value, epoch + 1, record
            unwrapped = accelerator.unwrap_model(model)
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in unwrapped.state_dict().items()}
            if train_cfg.save_model and accelerator.is_main_process:
                save_model(unwrapped, task, cfg.model_path, best_dir)
        if accelerator.is_main_process:
            shown = "  ".join(f"{name} {k} {v:.4f}" for name, m in dev_metrics.items() for k, v in m.items())
            progress.write(
                f"seed {seed} epoch {epoch + 1}: train loss {record['train_loss']:.4f}  {shown}"
                + ("  (best)" if improved else "")
            )
        if step >= total_steps:
            break
    progress.close()
    train_seconds = time.perf_counter() - started

    accelerator.unwrap_model(model).load_state_dict(best_state)
    dev_best = {name: {k: best_record[f"{name}/{k}"] for k in task.metrics} for name in dev_loaders}
    for name, split in data.test.items():
        loader = accelerator.prepare(
            make_loader(
                split,
                LengthGroupedBatchSampler(split.lengths, train_cfg.eval_batch_size, shuffle=False),
                collator,
            )
        )
        outputs = predict(model, loader, accelerator, len(split))
        if accelerator.is_main_process:
            write_predictions(
                task, data.test_examples[name], outputs, run_dir / "predictions" / f"{name}.tsv"
            )
    result = {
        "seed": seed,
        "best_epoch": best_epoch,
        "main_metric": task.main_metric,
        "dev": dev_best,
        "history": history,
        "steps": step,
        "seconds": round(time.perf_counter() - started, 2),
        "train_seconds": round(train_seconds, 2),
        "model": str(best_dir) if train_cfg.save_model else None,
    }
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    accelerator.free_memory(model, optimizer)
    return result


def _summarise(task: Task, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Every seed's dev metrics plus mean and (sample) standard deviation over seeds."""
    summary: dict[str, Any] = {"task": task.name, "main_metric": task.main_metric, "seeds": results}
    stats: dict[str, dict[str, float]] = {}
    for split in results[0]["dev"]:
        for metric in results[0]["dev"][split]:
            values = np.array([r["dev"][split][metric] for r in results], dtype=np.float64)
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            stats[f"{split}/{metric}"] = {"mean": float(values.mean()), "std": std}
    summary["mean_std"] = stats
    return summary


def _table(task: Task, summary: dict[str, Any]) -> str:
    keys = list(summary["mean_std"])
    header = f"{'seed':>6}  " + "  ".join(f"{k:>22}" for k in keys) + f"  {'best epoch':>10}  {'seconds':>8}"
    lines = [header]
    for r in summary["seeds"]:
        values = "  ".join(f"{r['dev'][k.split('/')[0]][k.split('/')[1]] * 100:>22.2f}" for k in keys)
        lines.append(f"{r['seed']:>6}  {values}  {r['best_epoch']:>10}  {r['seconds']:>8.1f}")
    if len(summary["seeds"]) > 1:
        values = "  ".join(
            f"{summary['mean_std'][k]['mean'] * 100:>13.2f} +- {summary['mean_std'][k]['std'] * 100:>5.2f}"
            for k in keys
        )
        lines.append(f"{'mean':>6}  {values}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ evaluation


def evaluate_saved(
    model_path: str | Path, cfg: FinetuneConfig, split: str = "dev", output: str | Path | None = None
) -> dict[str, Any]:
    """Score a fine-tuned model folder on a split of `cfg.task` (test: write predictions instead)."""
    model_path = Path(model_path)
    if not (model_path / "config.json").is_file():
        raise UserError(f"{model_path}: not a model folder (no config.json)")
    saved = json.loads((model_path / "config.json").read_text())
    names = [saved["id2label"][str(i)] for i in range(len(saved.get("id2label", {})))]
    task = load_task(cfg.task, labels=names if names and not names[0].startswith("LABEL_") else None)
    if saved.get("num_labels", len(names)) != task.num_labels:
        raise UserError(
            f"{model_path}: the model has {saved.get('num_labels')} outputs, task '{task.name}' needs {task.num_labels}"
        )
    tokenizer = load_tokenizer(model_path, cfg.train.max_length)
    accelerator, _, _ = _accelerator(cfg, with_trackers=False)
    model = load_model(model_path, task, cfg.attn_implementation)
    collator = Collator(tokenizer.token_to_id("[PAD]"), task.is_regression, cfg.train.pad_to_multiple_of)
    model = accelerator.prepare(model)
    results: dict[str, Any] = {"model": str(model_path), "task": task.name, "split": split}
    for name in task.split_names(split) if split != "train" else ["train"]:
        examples = task.read(name)
        encoded = encode_split(tokenizer, examples, cfg.train.max_length, cfg.train.cache_dir)
        loader = accelerator.prepare(
            make_loader(
                encoded,
                LengthGroupedBatchSampler(encoded.lengths, cfg.train.eval_batch_size, shuffle=False),
                collator,
            )
        )
        outputs = predict(model, loader, accelerator, len(encoded))
        if examples.labels is None:
            path = Path(output).with_suffix("") / f"{name}.tsv" if output else Path(f"predictions_{name}.tsv")
            if accelerator.is_main_process:
                write_predictions(task, examples, outputs, path)
                print(f"{name}: {len(examples)} predictions written to {path}")
            results[name] = {"predictions": str(path)}
            continue
        metrics = score(task, outputs, examples.labels)
        results[name] = metrics
        if accelerator.is_main_process:
            print(
                f"{name}: "
                + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                + f"  ({len(examples)} pairs)"
            )
    if output and accelerator.is_main_process:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(results, indent=2) + "\n")
    return results
