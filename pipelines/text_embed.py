"""DVC stage `text_embed`: the text encoders' outputs for every caption a DiT stage reads from the
table (params/dit.yaml train.stages.<stage>.text_source: table), written once to the table
`text_embeds` (osora.data.text_embeds), keyed by encoder and text. Stages that encode online
need nothing here: when none reads the table, the stage writes it empty. Resumable like the
latents stage (osora.data.runner)."""

from osora.data.runner import run_operator
from osora.data.stage import publish, say, stage_cli
from osora.data.text_embeds import TABLE, TextEmbedder, text_inputs
from osora.models.text import text_encoder_identity
from osora.tracking import stage_run

STAGE = "text_embed"
PARAMS = ("dit.text", "dit.train.stages")  # the sections read; dvc.yaml tracks them


def main() -> None:
    args, settings, store = stage_cli(__doc__, {"latents": "receipt of the latents stage"})
    params = settings.dit
    latent_sets = sorted({s.latents for s in params.train.stages.values()
                          if s.text_source == "table"})
    identity = text_encoder_identity(params.text)
    runner = settings.data.runner
    if params.text.embed_device == "cuda":  # one worker owns the GPU
        runner = runner.model_copy(update={"workers": 1})
    with stage_run(STAGE, settings, PARAMS, device=params.text.embed_device) as run:
        texts = [text for name in latent_sets
                 for text in run.read_input(store, args.latents, f"latents_{name}",
                                            columns=["text"]).column("text").to_pylist()]
        inputs = text_inputs(texts, identity)
        if not latent_sets:  # every stage encodes online: not even the empty text is needed
            inputs = inputs.slice(0, 0)
        say(run, [f"{inputs.num_rows} distinct texts of latent sets {latent_sets or 'none'} "
                  f"(stages with text_source: table), encoder {identity}"])
        embedder = TextEmbedder(params.text, identity, params.text.table_dtype,
                                params.text.embed_device)
        result = run_operator(embedder, inputs, stage=STAGE, store=store, params=runner,
                              retry_quarantined=args.retry_quarantined)
        metrics = {"texts": inputs.num_rows, "captions": len(texts)}
        publish(run, store, {TABLE: result.rows}, result, args.receipt, args.metrics, metrics)


if __name__ == "__main__":
    main()
