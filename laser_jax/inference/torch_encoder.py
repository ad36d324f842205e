"""LaSER latent-view embeddings with PyTorch + transformers (no JAX), for exported models.

A model written by `laser_jax.export_hf` is an ordinary transformers checkpoint; this module
is the reference for encoding with it outside laser_jax (the exported README shows the same
functions). torch and transformers are imported inside the functions only.

    from laser_jax.inference import torch_encoder
    model, tokenizer, meta = torch_encoder.load("path/to/hf_export")
    q = torch_encoder.latent_embed(model, tokenizer, torch_encoder.format_texts(
            tokenizer, ["why is the sky blue?"], meta, instruction="Given a question, ..."),
        num_thinking_steps=meta["num_thinking_steps"],
        pause_embedding=torch_encoder.load_pause_embedding("path/to/hf_export", meta))

`load_pause_embedding` is None for the paper's models; a model trained with
soft_token "pause" (laser.json) feeds its learned vector at every soft step instead.
"""
from __future__ import annotations

import json
import os

__all__ = ["load", "load_pause_embedding", "format_texts", "latent_embed"]


def load(model_dir: str, dtype: str = "float32", device: str = "cpu"):
    """(model in eval mode, tokenizer, laser.json meta) of an exported model directory.

    Args:
      model_dir: directory with config.json, safetensors, tokenizer files and laser.json.
      dtype: torch dtype name of the weights ("float32", "bfloat16", "float16").
      device: torch device string.

    Returns:
      (AutoModelForCausalLM, AutoTokenizer, dict with num_thinking_steps, query_template,
      chat_template; the spec's defaults when laser.json is absent).
    """
    # Deferred: torch is an optional, heavy dependency (laser_jax itself never needs it).
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = {"num_thinking_steps": 3, "query_template": "Instruct: {instruction}\nQuery: {query}",
            "chat_template": False}
    meta_path = os.path.join(model_dir, "laser.json")
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta.update(json.load(f))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    return model, AutoTokenizer.from_pretrained(model_dir), meta


def load_pause_embedding(model_dir, meta):
    """The learned pause vector [D] (float32 torch tensor) of a model whose laser.json says
    soft_token "pause" (from laser_pause.safetensors beside the weights); None otherwise.

    Raises:
      FileNotFoundError: laser.json says "pause" but laser_pause.safetensors is missing.
      ValueError: laser.json's soft_token is neither "expected_embedding" nor "pause".
    """
    # Imported here: torch is an optional dependency, and this function's source is copied
    # into a pause model's README as a standalone snippet (laser_jax.export_hf).
    import os

    from safetensors.torch import load_file

    soft_token = meta.get("soft_token", "expected_embedding")
    if soft_token not in ("expected_embedding", "pause"):
        raise ValueError(f"{model_dir}/laser.json: soft_token {soft_token!r} is not expected_embedding or pause")
    if soft_token != "pause":
        return None
    path = os.path.join(model_dir, "laser_pause.safetensors")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; laser.json says soft_token 'pause', whose vector it holds")
    return load_file(path)["pause_embedding"].float()


def format_texts(tokenizer, texts, meta, instruction=None):
    """Model text of queries (instruction given) or documents (instruction None).

    Queries fill meta["query_template"] ("{instruction}", "{query}"); with
    meta["chat_template"] every text becomes one chat user turn with the generation prompt
    followed by an empty think block, as in training.

    Returns:
      list of str, one per text.
    """
    if instruction is not None:
        texts = [meta["query_template"].format(instruction=instruction, query=t) for t in texts]
    if meta.get("chat_template"):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                               add_generation_prompt=True) + "<think>\n\n</think>\n\n"
                 for t in texts]
    return list(texts)


def latent_embed(model, tokenizer, texts, num_thinking_steps=3, max_length=512, batch_size=16,
                 pause_embedding=None):
    """L2-normalised latent-view embeddings of already formatted texts.

    Per batch: tokenize (right truncation), LEFT pad, one prefill pass keeping the KV cache;
    h_1 = last-layer state of the last token. Then K-1 times: soft token
    t = softmax(lm_head(h)) @ E (the expected input embedding), or the learned
    `pause_embedding` when given, is fed as inputs_embeds with the cache, one new position
    each (position ids continue cumsum(mask) - 1).
    The embedding is the L2-normalised mean of h_1..h_K.

    Args:
      model: a transformers *ForCausalLM in eval mode.
      tokenizer: its tokenizer.
      texts: N strings (formatted: see format_texts).
      num_thinking_steps: K >= 1 (K = 1 is last-token pooling).
      max_length: truncation length in tokens.
      batch_size: rows per forward pass.
      pause_embedding: None (the paper's soft token), or a [D] tensor fed at every soft step
        (a soft_token "pause" model: see load_pause_embedding).

    Returns:
      numpy float32 [N, D].
    """
    # Imported here: torch is an optional, heavy dependency, and this function's source is
    # copied into exported models' README as a standalone snippet (laser_jax.export_hf).
    import inspect

    import numpy as np
    import torch
    import torch.nn.functional as F

    if num_thinking_steps < 1:
        raise ValueError(f"num_thinking_steps must be >= 1, got {num_thinking_steps}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    table = model.get_input_embeddings().weight                     # E [V, D]
    head = model.get_output_embeddings()                            # W_lm
    # transformers >= 5.2x calls the KV cache `cache`; earlier releases `past_key_values`.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out_rows = []
    for start in range(0, len(texts), batch_size):
        rows = tokenizer(list(texts[start:start + batch_size]), truncation=True,
                         max_length=max_length)["input_ids"]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                        output_hidden_states=True)
            h = out.hidden_states[-1][:, -1]                        # [B, D]
            states, cache, last = [h], out[cache_kw], positions[:, -1:]
            for j in range(1, num_thinking_steps):
                if pause_embedding is None:
                    p = torch.softmax(head(h).float(), dim=-1)          # [B, V]
                    soft = (p @ table.float()).to(table.dtype)[:, None]  # [B, 1, D]
                else:  # soft_token "pause": the same learned vector whatever h is
                    soft = pause_embedding.to(device, table.dtype).expand(h.shape[0], 1, -1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                out = model(inputs_embeds=soft, attention_mask=mask, position_ids=last + j,
                            use_cache=True, output_hidden_states=True, **{cache_kw: cache})
                h, cache = out.hidden_states[-1][:, -1], out[cache_kw]
                states.append(h)
            emb = F.normalize(torch.stack(states, dim=1).float().mean(dim=1), dim=-1)
        out_rows.append(emb.cpu().numpy())
    return np.concatenate(out_rows) if out_rows else np.zeros((0, table.shape[1]), np.float32)
