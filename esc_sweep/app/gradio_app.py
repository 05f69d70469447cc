"""The Gradio app of ``esc-sweep serve``: one page, three tabs, one column of labels per model.

- *Upload or record*: a file or a microphone recording -> each model's top-5 labels, and the
  spectrogram with every clip-length window's predictions below it (long recordings).
- *Live microphone*: the microphone streamed in half-second chunks; each chunk updates a
  sliding window of the last clip-length seconds, which every model tags at once.
- *Batch*: many files -> a table of labels and the same table as a CSV download.

The same functions are Gradio's HTTP API (``/classify``, ``/batch``, ``/live``), which
``gradio_client`` calls. The computing is in ``esc_sweep.app.tagging``; this module only lays it
out. Imported by ``esc_sweep.app.serve`` once it knows Gradio is installed.
"""

from __future__ import annotations

import csv
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence

import gradio as gr
import pandas as pd  # a Gradio dependency; a DataFrame carries the column names to the page and the API

from esc_sweep.app.tagging import (
    MAX_UPLOAD_SECONDS,
    TOP_K,
    LiveStream,
    as_label,
    batch_rows,
    file_figure,
    live_step,
    model_names,
    tag_file,
)
from esc_sweep.errors import EscSweepError

STREAM_EVERY_SECONDS = 0.5  # how often the browser sends a microphone chunk while live tagging


def refused(message: str, what: str = "request") -> gr.Error:
    """The error a client gets for a request the app refuses, and one line on the server's console.

    A refused upload (not audio, too long, ...) is an ordinary event: Gradio would print the
    error's whole traceback (25 lines) for it; the client gets the message either way.
    """
    print(f"esc-sweep serve: refused {what}: {message}", file=sys.stderr, flush=True)
    return gr.Error(message, print_exception=False)


def _output_name(what: str, index: int, names: Sequence[str]) -> str:
    """An output's label, which is also its name in the HTTP API: ``top-5 labels`` (``..., model 2`` of several)."""
    return what if len(names) == 1 else f"{what}, model {index + 1}"


def build_app(bundles: Sequence[Any], examples: Sequence[Path] = (), max_upload_mb: Optional[float] = None
              ) -> gr.Blocks:
    """The Blocks app for ``bundles`` (one column each); queueing and launching are the caller's."""
    names = model_names(bundles)
    # Batch CSVs are written here and copied by Gradio into its own cache; the folder lives as long as
    # batch() (which holds it) and is removed when the process ends.
    outputs = tempfile.TemporaryDirectory(prefix="esc_sweep-serve-")

    def classify(path: Optional[str]):
        if not path:
            raise refused("Choose an audio file or record one first.", "/classify without a file")
        name = Path(path).name  # Gradio keeps the uploaded file's own name
        labels, figures, lengths = [], [], []
        for bundle in bundles:
            try:
                tags = tag_file(bundle, path, name)
            except EscSweepError as err:
                raise refused(str(err), name) from None
            labels.append(as_label(bundle, tags.probabilities))
            figures.append(file_figure(bundle, tags))
            lengths.append(tags)
        first = lengths[0]
        windows = first.window_probabilities.shape[0]
        summary = (f"**{name}**: {first.seconds:.1f} s, {windows} window{'s' * (windows != 1)} "
                   f"of {bundles[0].clip_seconds:g} s")
        return [summary, *labels, *figures]

    def live(chunk, stream: Optional[LiveStream]):
        if chunk is None:
            return [gr.skip()] * (len(bundles) + 1) + [stream]
        sample_rate, samples = chunk
        try:
            labels, stream, milliseconds = live_step(bundles, stream, sample_rate, samples)
        except EscSweepError as err:
            raise refused(str(err), "a live microphone chunk") from None
        status = (f"listening to the last {stream.heard_seconds():.1f} s; this chunk tagged in "
                  f"{milliseconds:.0f} ms ({stream.latency_summary()})")
        return [*labels, status, stream]

    def batch(paths: Optional[list[str]]):
        if not paths:
            raise refused("Choose one or more audio files first.", "/batch without files")
        header, rows = batch_rows(bundles, [(Path(p).name, p) for p in paths])
        target = Path(outputs.name) / uuid.uuid4().hex / "esc_sweep-predictions.csv"
        target.parent.mkdir()
        with open(target, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        return pd.DataFrame(rows, columns=header), str(target)

    with gr.Blocks(title="esc_sweep: tag a sound", analytics_enabled=False) as demo:
        models = "\n".join(f"- **{name}**: {bundle.describe()}" for name, bundle in zip(names, bundles))
        limits = f"up to {MAX_UPLOAD_SECONDS:g} s" + (f" and {max_upload_mb:g} MiB" if max_upload_mb else "")
        gr.Markdown(f"# Tag a sound\n{models}\n\nAny format soundfile reads, any sample rate, {limits} "
                    f"per recording.", elem_id="models")

        with gr.Tab("Upload or record", id="upload", elem_id="tab-upload"):
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio file or recording",
                             elem_id="audio-input")
            button = gr.Button("Classify", variant="primary", elem_id="classify")
            # Each output's label is its name in the HTTP API (/classify returns summary, then top-5 labels and
            # spectrogram per model); without one Gradio calls it value_<id>.
            summary = gr.Markdown(label="summary", elem_id="summary")
            labels, plots = [], []
            with gr.Row():
                for i, name in enumerate(names):
                    with gr.Column():
                        # The model's name is shown here; its outputs are named for what they are (the API's names).
                        gr.Markdown(f"**{name}**", elem_id=f"model-{i}")
                        labels.append(gr.Label(num_top_classes=TOP_K, label=_output_name("top-5 labels", i, names),
                                               elem_id=f"labels-{i}"))
                        plots.append(gr.Plot(label=_output_name("spectrogram and per-window predictions", i, names),
                                             format="png", elem_id=f"timeline-{i}"))
            button.click(classify, audio, [summary, *labels, *plots], api_name="classify")
            if examples:
                gr.Examples([[str(p)] for p in examples], inputs=audio, outputs=[summary, *labels, *plots],
                            fn=classify, run_on_click=True, cache_examples=False, label="Examples")

        with gr.Tab("Live microphone", id="live", elem_id="tab-live"):
            gr.Markdown(f"Press *Record*: every {STREAM_EVERY_SECONDS:g} s the models tag what they heard in the "
                        f"last {max(b.clip_seconds for b in bundles):g} s.")
            microphone = gr.Audio(sources=["microphone"], type="numpy", streaming=True, label="Microphone",
                                  elem_id="live-input")
            stream = gr.State(None)
            status = gr.Markdown(label="status", elem_id="live-status")
            with gr.Row():
                live_labels = []
                for i, name in enumerate(names):
                    with gr.Column():
                        gr.Markdown(f"**{name}**", elem_id=f"live-model-{i}")
                        live_labels.append(gr.Label(num_top_classes=TOP_K, label=_output_name("top-5 labels", i, names),
                                                    elem_id=f"live-labels-{i}"))
            microphone.stream(live, [microphone, stream], [*live_labels, status, stream], api_name="live",
                              stream_every=STREAM_EVERY_SECONDS, time_limit=None)
            # A new recording starts with an empty window, not the end of the previous one.
            microphone.start_recording(lambda: None, None, stream, api_name=False)

        with gr.Tab("Batch", id="batch", elem_id="tab-batch"):
            files = gr.File(file_count="multiple", type="filepath", label="Audio files", elem_id="batch-files")
            run = gr.Button("Tag all", variant="primary", elem_id="batch-run")
            table = gr.Dataframe(label="predictions", interactive=False, elem_id="batch-table")
            download = gr.File(label="predictions CSV", elem_id="batch-csv")
            run.click(batch, files, [table, download], api_name="batch")
    return demo
