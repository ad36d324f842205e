"""An encoder for mteb 2.x (its `EncoderProtocol`) backed by LaserEncoder.

    import mteb
    from laser_jax.inference.mteb import LaserMtebEncoder

    model = LaserMtebEncoder("path/to/hf_dir_or_workdir", num_thinking_steps=3)
    results = mteb.evaluate(model, mteb.get_tasks(tasks=["BrightRetrieval"]))

Prompts follow the LaSER authors' BRIGHT evaluation: queries are the model's query
template filled with a per-domain instruction (laser_jax.retrieval.bright.INSTRUCTIONS),
documents get no prefix (both chat-wrapped when the model uses chat wrapping: a laser_jax
model says so itself; the authors' released checkpoints, Hugging Face directories without
laser.json, get their authors' format, see laser_jax.inference.text_format; the
`chat_template`, `query_template` and `num_thinking_steps` arguments override it). The
domain is the task's subset (BrightRetrieval, BrightLongRetrieval: hf_subset "biology",
...) or is read from the task name (BrightBiologyRetrieval, BrightProAopsRetrieval, ...).
Other tasks use the task's own query prompt (`task_metadata.prompt`), then
`default_instruction`. Inputs without a prompt type (STS, classification, ...) are all
encoded the same way: as queries with the task's instruction.

mteb is imported only by `mteb_model_meta` (and by mteb itself); the rest works on any
object with the protocol's shape: batches are dicts with a "text" list, `prompt_type` is
mteb's PromptType or the strings "query" / "document".
"""
from __future__ import annotations

import copy
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional

import numpy as np
from absl import logging

from laser_jax.inference.encoder import LaserEncoder
from laser_jax.inference.text_format import apply_overrides, check_overrides
from laser_jax.method.views import resolve_num_thinking_steps
from laser_jax.retrieval import bright

__all__ = ["LaserMtebEncoder", "bright_domain", "DEFAULT_INSTRUCTION"]

DEFAULT_INSTRUCTION = "Given a query, retrieve relevant passages that answer the query."
_NORMALISED_DOMAINS = {re.sub(r"[^a-z0-9]", "", d): d for d in bright.BRIGHT_DOMAINS}


def bright_domain(task_name: str, hf_subset: Optional[str] = None) -> Optional[str]:
    """The BRIGHT domain of an mteb task, or None for a task that is not BRIGHT's.

    Args:
      task_name: e.g. "BrightRetrieval", "BrightLongRetrieval", "BrightEarthScienceRetrieval",
        "BrightProTheoremQATheoremsRetrieval".
      hf_subset: the subset being encoded ("biology", ... for BrightRetrieval; "default"
        for the one-domain tasks).

    Returns:
      A name of laser_jax.retrieval.bright.BRIGHT_DOMAINS, or None.
    """
    if not task_name.lower().startswith("bright"):
        return None
    if hf_subset in bright.BRIGHT_DOMAINS:
        return hf_subset
    key = re.sub(r"[^a-z0-9]", "", task_name.lower())
    key = re.sub(r"^bright(pro)?", "", key)
    key = re.sub(r"(long)?retrieval$", "", key)
    return _NORMALISED_DOMAINS.get(key)


def _prompt_kind(prompt_type) -> Optional[str]:
    """"query", "document" or None from mteb's PromptType (a str enum) or a plain string."""
    if prompt_type is None:
        return None
    value = getattr(prompt_type, "value", prompt_type)
    if value not in ("query", "document"):
        raise ValueError(f"unknown prompt_type {prompt_type!r}; expected query, document or None")
    return value


def _texts(inputs: Iterable[Mapping[str, Any]]) -> List[str]:
    texts: List[str] = []
    for batch in inputs:
        if "text" not in batch:
            raise ValueError(f"LaserMtebEncoder encodes text only; got a batch with keys {sorted(batch)}")
        texts.extend(str(t) for t in batch["text"])
    return texts


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, np.float32)
    return x[None] if x.ndim == 1 else x


def _label(model_name: Optional[str]) -> str:
    """mteb's "organisation/model" name: kept when it has that form, else from the path."""
    if not model_name:
        return "laser_jax/laser"
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model_name) and not os.path.exists(model_name):
        return model_name
    return "laser_jax/" + (os.path.basename(os.path.normpath(model_name)) or "laser")


def _with_format(encoder, chat_template: Optional[bool], query_template: Optional[str]):
    """A shallow copy of `encoder` (same weights) with its text format overridden."""
    fmt, _, _ = apply_overrides(encoder.text_format, encoder.num_thinking_steps, chat_template=chat_template,
                                query_template=query_template)
    encoder = copy.copy(encoder)
    encoder.text_format = fmt
    return encoder


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class LaserMtebEncoder:
    """mteb EncoderProtocol over a LaserEncoder (latent view with K thinking steps).

    Args:
      model_name: model path for LaserEncoder.from_pretrained (HF dir, workdir, checkpoint);
        results are recorded under it when it reads "organisation/name", else under
        "laser_jax/<directory name>".
      revision: recorded by mteb (optional).
      device: unused (JAX places the model); accepted for the protocol.
      encoder: an already loaded LaserEncoder (then model_name is only a label).
      num_thinking_steps: K at inference (default: the model's own).
      chat_template, query_template: override the model's text format (default: its own;
        see LaserEncoder.from_pretrained).
      max_length: max tokens per text (the spec evaluates with up to 8192).
      batch_size: rows per encoder batch (a fixed size keeps compiled shapes few).
      dtype: parameter/compute dtype for loading (default: float32 on CPU, bf16 otherwise).
      instructions: {task name or BRIGHT domain: query instruction} overrides.
      default_instruction: query instruction for tasks with none.
    """

    def __init__(self, model_name: Optional[str] = None, revision: Optional[str] = None, *,
                 device: Optional[str] = None, encoder=None, num_thinking_steps: Optional[int] = None,
                 max_length: int = 8192, batch_size: int = 16, dtype: Optional[str] = None,
                 instructions: Optional[Mapping[str, str]] = None,
                 default_instruction: str = DEFAULT_INSTRUCTION, chat_template: Optional[bool] = None,
                 query_template: Optional[str] = None, **kwargs: Any):
        del device, kwargs
        check_overrides(chat_template, query_template, num_thinking_steps)  # before the (slow) load
        text_format = {k: v for k, v in (("chat_template", chat_template), ("query_template", query_template),
                                         ("num_thinking_steps", num_thinking_steps)) if v is not None}
        if encoder is None:
            if not model_name:
                raise ValueError("give model_name (a model path) or an encoder")
            encoder = LaserEncoder.from_pretrained(model_name, dtype=dtype, **text_format)
        elif chat_template is not None or query_template is not None:
            encoder = _with_format(encoder, chat_template, query_template)
        self.encoder = encoder
        self.model_name = _label(model_name)
        self.revision = revision
        self.num_thinking_steps = resolve_num_thinking_steps(num_thinking_steps, encoder.num_thinking_steps)
        self.max_length = max_length
        self.batch_size = batch_size
        self.instructions: Dict[str, str] = dict(instructions or {})
        self.default_instruction = default_instruction
        self._meta = None
        self._warned = set()

    # ------------------------------------------------------------------ prompts
    def query_instruction(self, task_metadata, hf_subset: Optional[str] = None) -> str:
        """The instruction put into the query template for this task (and subset).

        Order: `instructions[task name]`, `instructions[BRIGHT domain]`, the BRIGHT
        domain's built-in instruction, the task's query prompt, `default_instruction`.
        """
        name = getattr(task_metadata, "name", None) or ""
        domain = bright_domain(name, hf_subset)
        for key in (name, domain):
            if key and key in self.instructions:
                return self.instructions[key]
        if domain is not None:
            return bright.INSTRUCTIONS[domain]
        prompt = getattr(task_metadata, "prompt", None)
        if isinstance(prompt, Mapping):
            prompt = prompt.get("query")
        if isinstance(prompt, str) and prompt.strip():
            return prompt.strip()
        if name not in self._warned:
            self._warned.add(name)
            logging.warning("task %r has no query instruction; using %r", name, self.default_instruction)
        return self.default_instruction

    # ------------------------------------------------------------------ protocol
    def encode(self, inputs, *, task_metadata, hf_split: str = "", hf_subset: str = "",
               prompt_type=None, **kwargs: Any) -> np.ndarray:
        """Embeds the texts of an mteb DataLoader.

        Args:
          inputs: iterable of batches, each a dict with "text": list[str] (mteb's
            DataLoader[BatchedInput]).
          task_metadata: the task's metadata (name, prompt).
          hf_split, hf_subset: the split / subset being encoded (subset = BRIGHT domain for
            BrightRetrieval).
          prompt_type: PromptType.query -> query template with the task's instruction;
            PromptType.document -> document formatting; None -> as queries.
          **kwargs: mteb's encode kwargs: `batch_size` (rows per compiled call; default the
            wrapper's own) and `show_progress_bar` are honoured, others ignored.

        Returns:
          float32 [N, D] L2-normalised, in input order.
        """
        del hf_split
        texts = _texts(inputs)
        batch_size = kwargs.get("batch_size") or self.batch_size
        opts = dict(num_thinking_steps=self.num_thinking_steps, max_length=self.max_length,
                    batch_size=int(batch_size), show_progress_bar=bool(kwargs.get("show_progress_bar", False)))
        if not texts:
            return np.zeros((0, int(self.encoder.cfg.hidden_size)), np.float32)
        if _prompt_kind(prompt_type) == "document":
            return self.encoder.encode_documents(texts, **opts)
        return self.encoder.encode_queries(texts, self.query_instruction(task_metadata, hf_subset), **opts)

    def similarity(self, embeddings1, embeddings2) -> np.ndarray:
        """Cosine similarities float32 [N1, N2] (embeddings [N, D] or [D], numpy or torch)."""
        return _normalise(_as_numpy(embeddings1)) @ _normalise(_as_numpy(embeddings2)).T

    def similarity_pairwise(self, embeddings1, embeddings2) -> np.ndarray:
        """Cosine similarity of row i with row i: float32 [N]."""
        return np.sum(_normalise(_as_numpy(embeddings1)) * _normalise(_as_numpy(embeddings2)), axis=-1)

    @property
    def mteb_model_meta(self):
        """mteb.models.ModelMeta describing this model (needs mteb installed)."""
        if self._meta is None:
            try:  # deferred: mteb is an optional, heavy dependency
                from mteb.models.model_meta import ModelMeta, ScoringFunction
            except ImportError as e:
                raise ImportError("mteb_model_meta needs mteb (pip install mteb)") from e
            self._meta = ModelMeta.create_empty(overwrites=dict(
                name=self.model_name, revision=self.revision, embed_dim=int(self.encoder.cfg.hidden_size),
                max_tokens=self.max_length, similarity_fn_name=ScoringFunction.COSINE, framework=["JAX"],
                use_instructions=True, open_weights=True,
                experiment_kwargs={"num_thinking_steps": self.num_thinking_steps}))
        return self._meta
