"""Greedy reasoning of a (pretrained) LM on a generated task, and its end-state accuracy.

Each query of a BRIGHT-format split (eval/ or dev/ of `laser_jax.data.synthetic`) is
formatted as the explicit view's prefix (`inference.reasoning.query_prefixes`: the query
template with the domain's instruction, chat-wrapped when asked) and continued greedily up to
EOS by `inference.reasoning.generate_reasonings` (the generation rewrite-then-retrieve uses; at most
`max_new` tokens: by default the split's longest gold reasoning + a margin). The answer of the
generated reasoning is its last match of the task's answer pattern (meta.json "answer": the
last number for the arithmetic task, the last entity name for the hops task;
`inference.reasoning.end_state_accuracy`; this module is its command line); it is right when
it equals the chain's end state (`<split>/<domain>/chains.jsonl` `states[-1]`).

    python -m laser_jax.experiments.lm_eval --model=DIR --split_dir=TASK/eval [--out=lm_eval.json]

"""
from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

from absl import flags

from laser_jax.cli import define_help, run_cli
from laser_jax.inference.reasoning import end_state_accuracy, format_result

FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "HF directory, training workdir or checkpoint.", flag_values=FLAGS)
flags.DEFINE_string("split_dir", None, "BRIGHT-format split of the synthetic task (eval/ or dev/).",
                    flag_values=FLAGS)
flags.DEFINE_string("out", "", "Write the result as JSON here.", flag_values=FLAGS)
flags.DEFINE_integer("max_new", 0, "Most new tokens; 0 = the longest gold reasoning + a margin.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 128, "Queries per generation batch.", flag_values=FLAGS)
define_help(FLAGS)


def _command(f: flags.FlagValues) -> str:
    from laser_jax.inference.load import load_for_inference

    if not f.model or not f.split_dir:
        raise ValueError("--model and --split_dir are required")
    loaded = load_for_inference(f.model, "float32")
    result = end_state_accuracy(loaded, f.split_dir, loaded.text_format, max_new=f.max_new,
                                batch_size=f.batch_size)
    if f.out:
        with open(f.out, "w") as fh:
            json.dump(result, fh, indent=1)
    return format_result(result)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Returns the exit status."""
    return run_cli(FLAGS, _command, argv)


if __name__ == "__main__":
    sys.exit(main())
