"""A1111's "Prompts from file or textbox": one generation per non-empty line of the text (or of an
uploaded file, which fills the text). A plain line is the prompt; a line starting with `--` sets
fields with A1111's command-line syntax (shell quoting):

    --prompt "a cat" --negative_prompt "blurry" --steps 30 --seed 5 --sd_model "v1-5" --width 512

`--prompt` and `--negative_prompt` take every word up to the next `--`. The keys and their types
are A1111's (`PROMPT_TAGS`). A line's prompt joins the request's prompt at the start or the end
("Insert prompts at the"), with a space. "Iterate seed every line" moves the seed on by
`batch_size * n_iter` per line; either seed box fixes a random seed (-1) once for all lines.
A1111's `script_args`: `[checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt]`.

Unlike A1111, which logs a line it cannot parse and takes it whole as the prompt, a bad `--`
line is an error naming the line, before anything is generated.
"""

from __future__ import annotations

import copy
import random
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modules.core.errors import NotFoundError, ValidationError
from modules.engine import samplers as smp
from modules.extensions import runtime
from modules.extensions.processing_api import Processed, StableDiffusionProcessing, process_images
from modules.extensions.script_base import Script

POSITIONS = ("start", "end")


def _int(text: str) -> int:
    return int(text)


def _float(text: str) -> float:
    return float(text)


def _string(text: str) -> str:
    return text


def _boolean(text: str) -> bool:
    return text == "true"  # A1111: anything but "true" is False


def _styles(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _checkpoint(text: str) -> str:
    """A1111's closest match: any alias of a checkpoint, else the shortest title containing it."""
    env = runtime.maybe_environment()
    if env is None or env.registry is None:
        raise ValueError("no checkpoint list to look the model up in")
    try:
        return str(env.registry.find_checkpoint(text).title)
    except NotFoundError:
        pass
    found = sorted((c for c in env.registry.checkpoints() if text in c.title), key=lambda c: len(c.title))
    if not found:
        raise ValueError(f"Unknown checkpoint: {text}")
    return str(found[0].title)


def _sampler(text: str) -> str:
    try:
        smp.resolve_sampler(text, None)
    except NotFoundError:
        raise ValueError(f"unknown sampler: {text}") from None
    return text


# keyword form: these are `p` fields; the quoted names of the options module are settings
PROMPT_TAGS: dict[str, Callable[[str], Any]] = dict(
    sd_model=_checkpoint,
    outpath_samples=_string,
    outpath_grids=_string,
    prompt_for_display=_string,
    prompt=_string,
    negative_prompt=_string,
    styles=_styles,
    seed=_int,
    subseed_strength=_float,
    subseed=_int,
    seed_resize_from_h=_int,
    seed_resize_from_w=_int,
    sampler_index=_int,
    sampler_name=_sampler,
    batch_size=_int,
    n_iter=_int,
    steps=_int,
    cfg_scale=_float,
    width=_int,
    height=_int,
    restore_faces=_boolean,
    tiling=_boolean,
    do_not_save_samples=_boolean,
    do_not_save_grid=_boolean,
)
"""A1111's allowed `--keys` and how each value is read."""

# keys A1111 takes that change nothing here, with why (the line still runs; a warning says so)
NOT_USED = {
    "outpath_samples": "output folders come from the settings",
    "outpath_grids": "output folders come from the settings",
    "sampler_index": "sampler_index does nothing (as in A1111 1.10); use --sampler_name",
}
TEXT_TAGS = ("prompt", "negative_prompt")


def parse_line(line: str) -> dict[str, Any]:
    """The fields one `--key value ...` line sets. Raises ValueError saying what is wrong."""
    try:
        args = shlex.split(line)
    except ValueError as exc:
        raise ValueError(f"cannot split the line: {exc}") from None
    out: dict[str, Any] = {}
    pos = 0
    while pos < len(args):
        arg = args[pos]
        if not arg.startswith("--"):
            raise ValueError(f'must start with "--": {arg}')
        if pos + 1 >= len(args):
            raise ValueError(f"missing argument for command line option {arg}")
        tag = arg[2:]
        if tag in TEXT_TAGS:
            words = [args[pos + 1]]
            pos += 2
            while pos < len(args) and not args[pos].startswith("--"):
                words.append(args[pos])
                pos += 1
            out[tag] = " ".join(words)
            continue
        reader = PROMPT_TAGS.get(tag)
        if reader is None:
            raise ValueError(f"unknown commandline option: {arg}")
        value = args[pos + 1]
        try:
            out[tag] = reader(value)
        except ValueError as exc:
            raise ValueError(f"{arg} {value}: {exc}") from None
        pos += 2
    return out


@dataclass
class Line:
    number: int  # 1-based, counting every line of the text
    text: str
    args: dict[str, Any]


def parse_lines(text: str) -> list[Line]:
    """Every non-empty line's fields; a bad line raises a ValidationError naming it."""
    out: list[Line] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("--"):
            try:
                args = parse_line(line)
            except ValueError as exc:
                raise ValidationError(f"Prompts from file: line {number} ({line!r}): {exc}") from None
            _check_line(number, line, args)
        else:
            args = {"prompt": line}
        out.append(Line(number, line, args))
    return out


def _check_line(number: int, line: str, args: dict[str, Any]) -> None:
    def bad(message: str) -> ValidationError:
        return ValidationError(f"Prompts from file: line {number} ({line!r}): {message}")

    for key in ("steps", "batch_size", "n_iter", "width", "height"):
        if key in args and args[key] < 1:
            raise bad(f"--{key} must be at least 1 (got {args[key]})")
    if "subseed_strength" in args and not 0 <= args["subseed_strength"] <= 1:
        raise bad(f"--subseed_strength must be within 0..1 (got {args['subseed_strength']})")


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError(f"Prompts from file: {what} must be text, got {type(value).__name__}")
    return value


def _flag(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise ValidationError(f"Prompts from file: {what} must be true or false, got {value!r}")


def load_prompt_file(file: Any) -> tuple[Any, Any, Any]:
    """The upload control's change: the file's lines (stripped) into the textbox, the upload
    cleared. A1111 gives the file as bytes; Gradio 6 may give a path."""
    import gradio as gr

    if file is None:
        return None, gr.update(), gr.update(lines=7)
    if isinstance(file, bytes | bytearray):
        data = bytes(file)
    else:
        path = getattr(file, "name", None) or getattr(file, "path", None) or str(file)
        with open(path, "rb") as handle:
            data = handle.read()
    lines = [x.strip() for x in data.decode("utf8", errors="ignore").split("\n")]
    return None, "\n".join(lines), gr.update(lines=7)


class PromptsFromFile(Script):
    def title(self) -> str:
        return "Prompts from file or textbox"

    def ui(self, is_img2img: bool) -> Any:
        import gradio as gr

        checkbox_iterate = gr.Checkbox(
            label="Iterate seed every line", value=False, elem_id=self.elem_id("checkbox_iterate")
        )
        checkbox_iterate_batch = gr.Checkbox(
            label="Use same random seed for all lines", value=False, elem_id=self.elem_id("checkbox_iterate_batch")
        )
        prompt_position = gr.Radio(
            list(POSITIONS), label="Insert prompts at the", elem_id=self.elem_id("prompt_position"), value="start"
        )
        prompt_txt = gr.Textbox(label="List of prompt inputs", lines=1, elem_id=self.elem_id("prompt_txt"))
        file = gr.File(label="Upload prompt inputs", type="binary", elem_id=self.elem_id("file"))
        file.change(fn=load_prompt_file, inputs=[file], outputs=[file, prompt_txt, prompt_txt], show_progress="hidden")
        # one line until there is text; then 7 lines, or 2 without a newline (never back to 1,
        # where Enter would no longer make a new line)
        prompt_txt.change(
            lambda tb: gr.update(lines=7) if "\n" in (tb or "") else gr.update(lines=2),
            inputs=[prompt_txt],
            outputs=[prompt_txt],
            show_progress="hidden",
        )
        return [checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt]

    def run(
        self, p: Any, checkbox_iterate: Any, checkbox_iterate_batch: Any, prompt_position: Any, prompt_txt: Any
    ) -> Processed:
        iterate = _flag(checkbox_iterate, "iterate seed every line")
        same_seed = _flag(checkbox_iterate_batch, "use same random seed for all lines")
        if prompt_position not in POSITIONS:
            raise ValidationError(f"Prompts from file: prompt position must be start or end, got {prompt_position!r}")
        lines = parse_lines(_text(prompt_txt, "the list of prompt inputs"))
        if not lines:
            raise ValidationError("Prompts from file: no prompts: the list of prompt inputs is empty")

        p.do_not_save_grid = True
        job = runtime.current_job()
        job_count = sum(int(line.args.get("n_iter", p.n_iter)) for line in lines)
        if (iterate or same_seed) and p.seed == -1:
            p.seed = int(random.randrange(4294967294))
        for line in lines:
            for key in line.args:
                if key in NOT_USED and job is not None:
                    warning = f"Prompts from file: line {line.number}: --{key} is not used: {NOT_USED[key]}"
                    if warning not in job.warnings:
                        job.warnings.append(warning)

        parts: list[Processed] = []
        done = 0
        for line in lines:
            if job is not None:
                if job.ctx.interrupted or job.ctx.stopping_generation:
                    break
                job.ctx.textinfo = f"Prompts from file: {done + 1} out of {job_count}"
            line_p = self._line_p(p, line.args, str(prompt_position))
            processed = process_images(line_p)
            parts.append(processed)
            done += int(line_p.n_iter)
            if iterate:
                p.seed = int(p.seed) + int(p.batch_size) * int(p.n_iter)

        images: list[Any] = []
        infotexts: list[str] = []
        for part in parts:
            first = part.index_of_first_image
            images.extend(part.images[first:])
            infotexts.extend(part.infotexts[first:])
        out = Processed(
            p,
            images,
            int(p.seed) if isinstance(p.seed, int) else -1,
            "",
            all_prompts=[x for part in parts for x in part.all_prompts],
            all_negative_prompts=[x for part in parts for x in part.all_negative_prompts],
            all_seeds=[x for part in parts for x in part.all_seeds],
            all_subseeds=[x for part in parts for x in part.all_subseeds],
            infotexts=infotexts,
        )
        out.results = [r for part in parts for r in part.results]
        return out

    @staticmethod
    def _line_p(p: StableDiffusionProcessing, args: dict[str, Any], position: str) -> StableDiffusionProcessing:
        line_p = copy.copy(p)
        # the copy's own dicts and lists: a line's --sd_model must not stick to the next lines
        line_p.override_settings = dict(p.override_settings or {})
        line_p.extra_generation_params = dict(p.extra_generation_params or {})
        line_p.styles = list(p.styles or [])
        for key, value in args.items():
            if key == "sd_model":
                line_p.override_settings["sd_model_checkpoint"] = value
            elif key in NOT_USED:
                continue
            else:
                setattr(line_p, key, value)
        for key in TEXT_TAGS:
            own = args.get(key)
            base = getattr(p, key)
            if own and base and isinstance(base, str):
                setattr(line_p, key, f"{own} {base}" if position == "start" else f"{base} {own}")
        return line_p
