"""LaSER latent-view encoder as a sentence-transformers module (PyTorch only).

`laser_jax.export_hf` copies this file, unchanged, into every exported model directory
(with `modules.json` naming `laser_st.LaserLatentEncoder`), so that

    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer("path/to/export", trust_remote_code=True)
    q = model.encode_query(["What is 3 plus 4?"], prompt="Given a question, retrieve passages that answer it.")
    d = model.encode_document(["The number 7 is the sum of two smaller numbers."])

gives the embeddings `laser_jax.LaserEncoder` gives. The file must stay self-contained: it
runs where laser_jax is not installed, and imports only torch, transformers,
sentence_transformers and safetensors (which transformers needs). Without
`trust_remote_code=True` sentence-transformers refuses to load the directory (it will not
import a module class from it), rather than falling back to another pooling.

Texts: a prompt given to `encode` (`prompt=...`, or `prompt_name="query"`, which
`encode_query` uses; the "query" prompt saved with the model is a generic instruction) is
the query INSTRUCTION: the text becomes laser.json's `query_template` filled with
{instruction} = the prompt and {query} = the text. No prompt, or an empty one (the
"document" prompt, `encode_document`), leaves the text as it is. With laser.json's
`chat_template` every text is then one chat user turn + generation prompt + an empty think
block, as in training.

Encoding (the reference is laser_jax/inference/torch_encoder.py): tokenize (right
truncation at `max_seq_length`), left pad; one prefill pass keeping the KV cache; h_1 =
last-layer state of the last token; then K-1 times the soft token softmax(lm_head(h)) @ E
is fed as one new position; the embedding is the L2-normalised mean of h_1..h_K. A model
whose laser.json says soft_token "pause" feeds instead its learned pause vector
(laser_pause.safetensors beside the weights) at every soft step.
"""
from __future__ import annotations

import inspect
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

try:  # sentence-transformers >= 5.4
    from sentence_transformers.base.modules import InputModule
except ImportError:  # pragma: no cover - older releases
    from sentence_transformers.models import InputModule

LASER_META = "laser.json"
DEFAULTS = {"num_thinking_steps": 3, "query_template": "Instruct: {instruction}\nQuery: {query}",
            "chat_template": False, "max_seq_length": 512}
THINK_SUFFIX = "<think>\n\n</think>\n\n"
SOFT_TOKENS = ("expected_embedding", "pause")
PAUSE_FILE, PAUSE_TENSOR = "laser_pause.safetensors", "pause_embedding"  # as laser_jax.inference.pause_file


def read_pause(model_dir: str, meta: dict, hidden_size: int):
    """The learned pause vector [D] (float32) of a soft_token "pause" model, else None."""
    soft_token = meta.get("soft_token", SOFT_TOKENS[0])
    if soft_token not in SOFT_TOKENS:
        raise ValueError(f"{os.path.join(model_dir, LASER_META)}: soft_token {soft_token!r} is not one of {SOFT_TOKENS}")
    if soft_token != "pause":
        return None
    path = os.path.join(model_dir, PAUSE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; {LASER_META} says soft_token 'pause', whose vector it holds")
    vector = load_file(path).get(PAUSE_TENSOR)
    if vector is None or tuple(vector.shape) != (hidden_size,):
        raise ValueError(f"{path}: expected a tensor {PAUSE_TENSOR!r} of shape [{hidden_size}]")
    return vector.float()


class LaserLatentEncoder(InputModule):
    """Tokenizer + causal LM + K-step latent pooling: texts -> L2-normalised embeddings."""

    save_in_root = True

    def __init__(self, model_dir: str, model_kwargs: dict | None = None, processor_kwargs: dict | None = None):
        super().__init__()
        meta = dict(DEFAULTS)
        meta_path = os.path.join(model_dir, LASER_META)
        if os.path.exists(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                meta.update(json.load(f))
        steps = meta["num_thinking_steps"]
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise ValueError(f"{meta_path}: num_thinking_steps must be an integer >= 1, got {steps!r}")
        self.meta = meta
        self.num_thinking_steps = int(steps)
        self.query_template = meta["query_template"]
        self.chat_template = bool(meta["chat_template"])
        self.max_seq_length = int(meta["max_seq_length"])
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, **(model_kwargs or {})).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, **(processor_kwargs or {}))
        # None for the paper's soft token; a buffer moves with the module (.to(device))
        self.register_buffer("pause_embedding", read_pause(model_dir, meta, self.model.config.hidden_size),
                             persistent=False)

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token=None, cache_folder=None, revision=None,
             local_files_only: bool = False, trust_remote_code: bool = False, model_kwargs=None,
             processor_kwargs=None, config_kwargs=None, backend: str = "torch", **kwargs):
        """What sentence-transformers calls for the module of modules.json (path "")."""
        del trust_remote_code, config_kwargs, kwargs
        if backend != "torch":
            raise ValueError(f"LaserLatentEncoder runs with the torch backend only, not {backend!r}")
        model_dir = cls.load_dir_path(model_name_or_path, subfolder=subfolder, token=token,
                                      cache_folder=cache_folder, revision=revision,
                                      local_files_only=local_files_only)
        return cls(model_dir, model_kwargs=model_kwargs, processor_kwargs=processor_kwargs)

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.tokenizer.save_pretrained(output_path)
        meta = dict(self.meta, num_thinking_steps=self.num_thinking_steps, query_template=self.query_template,
                    chat_template=self.chat_template, max_seq_length=self.max_seq_length)
        with open(os.path.join(output_path, LASER_META), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        if self.pause_embedding is not None:
            save_file({PAUSE_TENSOR: self.pause_embedding.detach().cpu().contiguous()},
                      os.path.join(output_path, PAUSE_FILE), metadata={"format": "pt"})

    def get_embedding_dimension(self) -> int:
        return int(self.model.config.hidden_size)

    get_sentence_embedding_dimension = get_embedding_dimension

    # ------------------------------------------------------------------ texts
    def format_texts(self, texts, prompt: str | None = None) -> list:
        """The model's text of each input: the query template filled when a prompt (the
        instruction) is given, then chat wrapping when the model was trained with it."""
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        if prompt:
            texts = [self.query_template.format(instruction=prompt, query=t) for t in texts]
        if self.chat_template:
            texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                        add_generation_prompt=True) + THINK_SUFFIX
                     for t in texts]
        return texts

    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict:
        """Left-padded input_ids / attention_mask of the formatted texts."""
        if any(isinstance(t, (tuple, list, dict)) for t in inputs):
            raise ValueError("LaserLatentEncoder embeds single texts only")
        rows = self.tokenizer(self.format_texts(inputs, prompt), truncation=True,
                              max_length=self.max_seq_length)["input_ids"]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        width = max((len(r) for r in rows), default=0)
        ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask}

    def tokenize(self, texts, **kwargs) -> dict:  # older sentence-transformers
        return self.preprocess(texts, **kwargs)

    # ------------------------------------------------------------------ encoding
    def forward(self, features: dict, **kwargs) -> dict:
        model = self.model
        ids, mask = features["input_ids"], features["attention_mask"]
        table = model.get_input_embeddings().weight                     # E [V, D]
        head = model.get_output_embeddings()                            # W_lm
        # transformers >= 5.2x calls the KV cache `cache`; earlier releases `past_key_values`.
        cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    output_hidden_states=True)
        h = out.hidden_states[-1][:, -1]                                # [B, D]
        states, cache, last = [h], out[cache_kw], positions[:, -1:]
        for j in range(1, self.num_thinking_steps):
            if self.pause_embedding is None:
                p = torch.softmax(head(h).float(), dim=-1)              # [B, V]
                soft = (p @ table.float()).to(table.dtype)[:, None]      # [B, 1, D]
            else:  # soft_token "pause": the same learned vector whatever h is
                soft = self.pause_embedding.to(table.device, table.dtype).expand(h.shape[0], 1, -1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(inputs_embeds=soft, attention_mask=mask, position_ids=last + j, use_cache=True,
                        output_hidden_states=True, **{cache_kw: cache})
            h, cache = out.hidden_states[-1][:, -1], out[cache_kw]
            states.append(h)
        features["sentence_embedding"] = F.normalize(torch.stack(states, dim=1).float().mean(dim=1), dim=-1)
        return features
