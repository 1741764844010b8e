"""YaRN rotary scaling (Megatron's --position-embedding-type yarn and its flags), proven against
transformers' own YaRN (modeling_rope_utils.py), never against this package's outputs:

- the rope settings of a config.json, as transformers 4 (rope_scaling) and 5 (rope_parameters)
  write them, become Megatron flags whose cos/sin (attention factor included) equal
  transformers' rotary embedding, for each of transformers' rules (factor from the lengths, a
  top-level original length, mscale pairs, an explicit attention factor, truncate, betas);
  export writes them back so that transformers builds the same embedding again; every other rope
  type is refused by name;
- a random YaRN Qwen3 imported by the conversion module (import-hf) gives transformers' logits
  (1e-4) and loss (1e-5) at 4x its original context at D = 1, 2 and 4, and greedy generation
  over that context equals transformers' generate(); the export's config.json is the source's;
- --use-checkpoint-args brings a checkpoint's YaRN settings back, and without it the
  checkpoint's settings are still the default of every rotary flag not given; values that
  would crash the first step and the RoPE flags TSP cannot honour are refused;
- (slow) pretrain_qwen3.py at --tsp-size 2 on the imported checkpoint logs transformers' loss.
"""

import copy
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from megatron_tsp.config import YarnScaling
from megatron_tsp.config_adapters import hf_config_from_qwen3, qwen3_config_from_hf
from megatron_tsp.conversion.convert import export_hf, import_hf
from megatron_tsp.layers.rotary import rotary_cos_sin
from tests.dist import run_distributed
from tests.hf_models import HF_SHAPE, randomize
from tests.launch_inputs import prepared_args
from tests.pretrain_runner import ROOT, run_pretrain
from tests.test_continued_pretraining import _hf_loss, _repeated_dataset

ORIGINAL, FACTOR = 32, 4
SEQ = FACTOR * ORIGINAL  # the extended context the model is run at
MAX_NEW = 9
CARD = {"rope_type": "yarn", "factor": float(FACTOR), "original_max_position_embeddings": ORIGINAL}
# config.json rope settings, each exercising one of transformers' rules
ROPES = {
    "model_card_4.x": {"rope_theta": 1e6, "rope_scaling": CARD},
    "saved_by_5.x": {"rope_parameters": {**CARD, "rope_theta": 1e6}},
    "type_key_original_from_max_positions": {
        "rope_theta": 1e4, "rope_scaling": {"type": "yarn", "factor": 2.0}},
    "factor_from_the_lengths": {"rope_theta": 1e6, "rope_scaling": {
        "rope_type": "yarn", "factor": None, "original_max_position_embeddings": 16}},
    "top_level_original_wins": {"rope_theta": 1e6, "original_max_position_embeddings": 16,
                                "rope_scaling": CARD},
    "mscale_pair": {"rope_theta": 1e6, "rope_scaling": {**CARD, "factor": 8.0, "mscale": 0.8,
                                                        "mscale_all_dim": 0.5}},
    "lone_mscale_ignored": {"rope_theta": 1e6, "rope_scaling": {**CARD, "mscale": 3.0}},
    "explicit_attention_factor": {"rope_theta": 1e6, "rope_scaling": {
        **CARD, "attention_factor": 1.37, "mscale": 0.8, "mscale_all_dim": 0.5}},
    "untruncated_betas": {"rope_theta": 1e6, "rope_scaling": {
        **CARD, "truncate": False, "beta_fast": 16.0, "beta_slow": 2.0}},
    "zero_betas_are_defaults": {"rope_theta": 1e6, "rope_scaling": {
        **CARD, "beta_fast": 0, "beta_slow": 0}},
}


def _config_json(**rope) -> dict:
    return {**HF_SHAPE, "model_type": "qwen3", "max_position_embeddings": SEQ, **rope}


def _transformers_cos_sin(config_json: dict):
    """transformers' cos, sin [SEQ, head_dim] (fp32, attention factor applied)."""
    # a copy: transformers writes its defaults into the rope dicts it is given
    rotary = Qwen3RotaryEmbedding(transformers.Qwen3Config(**copy.deepcopy(config_json)))
    cos, sin = rotary(torch.zeros(1), torch.arange(SEQ).unsqueeze(0))
    return cos[0], sin[0]


def _our_cos_sin(config):
    cos, sin = rotary_cos_sin(torch.arange(SEQ).unsqueeze(0), config.kv_channels,
                              config.rotary_base, config.yarn)
    return cos[:, 0, 0], sin[:, 0, 0]


@pytest.mark.parametrize("name", sorted(ROPES))
def test_imported_flags_give_transformers_cos_sin(name):
    config_json = _config_json(**ROPES[name])
    config = qwen3_config_from_hf(config_json, "c.json")
    expected = _transformers_cos_sin(config_json)
    for ours, theirs in zip(_our_cos_sin(config), expected):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    plain = _our_cos_sin(config.replace(yarn=None))
    assert not torch.allclose(plain[0], expected[0], atol=1e-3), "YaRN changed nothing here"


@pytest.mark.parametrize("name", sorted(ROPES))
def test_export_writes_back_what_transformers_reads_the_same(name):
    config_json = _config_json(**ROPES[name])
    config = qwen3_config_from_hf(config_json, "c.json")
    exported = hf_config_from_qwen3(config, "float32")
    parameters = exported["rope_parameters"]
    assert exported["rope_scaling"] == {k: v for k, v in parameters.items() if k != "rope_theta"}
    assert parameters["rope_theta"] == exported["rope_theta"] == config.rotary_base
    # transformers 4 reads rope_scaling, 5 prefers it too; rope_parameters alone as 5 saves it
    for key in ("rope_scaling", "rope_parameters"):
        alone = {k: v for k, v in exported.items() if k not in ("rope_scaling", "rope_parameters")}
        alone[key] = exported[key]
        for ours, theirs in zip(_transformers_cos_sin(alone), _transformers_cos_sin(config_json)):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert qwen3_config_from_hf(exported, "c.json") == config
    resaved = transformers.Qwen3Config(**copy.deepcopy(exported)).to_dict()
    assert qwen3_config_from_hf(resaved, "c.json") == config


def test_the_model_card_settings_come_back_as_given():
    config = qwen3_config_from_hf(_config_json(**ROPES["model_card_4.x"]), "c.json")
    exported = hf_config_from_qwen3(config)
    assert CARD.items() <= exported["rope_scaling"].items()
    assert exported["rope_scaling"].keys() - CARD.keys() == {"beta_fast", "beta_slow"}


@pytest.mark.parametrize("kind", ["linear", "dynamic", "longrope", "llama3"])
@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters"])
def test_other_rope_types_are_refused_by_name(kind, key):
    with pytest.raises(ValueError, match=f"c.json: {key}.rope_type '{kind}' is not supported"):
        qwen3_config_from_hf(_config_json(rope_theta=1e6, **{key: {"rope_type": kind,
                                                                   "factor": 2.0}}), "c.json")


@pytest.mark.parametrize("rope, words", [
    ({"rope_scaling": {**CARD, "factor": 1.0, "attention_factor": 1.2}}, "attention_factor"),
    ({"rope_scaling": {**CARD, "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
    ({"rope_scaling": {**CARD, "factor": 0.5}}, "--rotary-scaling-factor must be finite and >= 1"),
    ({"rope_scaling": CARD, "rope_parameters": {**CARD, "factor": 2.0}}, "disagree"),
    ({"rope_scaling": {"rope_type": "yarn", "original_max_position_embeddings": 32}}, "factor"),
])
def test_yarn_settings_megatron_cannot_express_are_refused(rope, words):
    with pytest.raises(ValueError, match="c.json") as error:
        qwen3_config_from_hf(_config_json(rope_theta=1e6, **rope), "c.json")
    assert words in str(error.value), error.value


def test_cos_sin_are_made_on_the_positions_device():
    """On the meta device nothing can be read back by the host nor mixed with a CPU tensor."""
    positions = torch.arange(SEQ, device="meta").unsqueeze(0)
    for cos_or_sin in rotary_cos_sin(positions, 32, 1e6, YarnScaling(4.0, ORIGINAL)):
        assert cos_or_sin.device.type == "meta" and cos_or_sin.dtype == torch.float32


_LAUNCH = ["--mock-data", "--micro-batch-size", "1", "--train-iters", "1", "--lr", "1e-3",
           "--seq-length", "64"]


@pytest.mark.parametrize("flags, message", [
    (["--rotary-scaling-factor", "4"], "--rotary-scaling-factor 4.0 needs --position-embedding"),
    (["--yarn-beta-fast", "8"], "--yarn-beta-fast 8.0 needs --position-embedding-type yarn"),
    (["--position-embedding-type", "learned_absolute"], "learned_absolute is not supported"),
    (["--rotary-percent", "0.5"], "--rotary-percent 0.5 is not supported"),
    (["--rotary-interleaved"], "--rotary-interleaved True is not supported"),
    (["--use-rope-scaling"], "--use-rope-scaling True is not supported"),
    (["--rotary-seq-len-interpolation-factor", "2"], "--rotary-seq-len-interpolation-factor"),
    (["--position-embedding-type", "yarn", "--rotary-scaling-factor", "0.5"], "and >= 1"),
    # values that crashed the first step or made every loss NaN
    (["--position-embedding-type", "yarn", "--yarn-beta-fast", "0"], "--yarn-beta-fast"),
    (["--position-embedding-type", "yarn", "--yarn-beta-slow", "-1"], "--yarn-beta-fast"),
    (["--position-embedding-type", "yarn", "--rotary-scaling-factor", "inf"],
     "--rotary-scaling-factor"),
    (["--position-embedding-type", "yarn", "--rotary-scaling-factor", "4", "--mscale", "nan",
      "--mscale-all-dim", "1"], "--mscale nan"),
    (["--position-embedding-type", "yarn", "--use-rotary-position-embeddings"],
     "--use-rotary-position-embeddings makes Megatron replace"),
])
def test_rope_flags_tsp_cannot_honour_are_refused(monkeypatch, flags, message):
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError) as error:
        prepared_args([*_LAUNCH, *flags])
    assert message in str(error.value), error.value


def test_the_planner_accepts_and_carries_the_yarn_flags(capsys):
    from megatron_tsp.planner.plan import main
    argv = ["--model-size", "8b", "--seq-length", "131072", "--max-position-embeddings",
            "131072", "--gpus", "8"]
    plain = main(argv)
    printed = capsys.readouterr().out
    yarn = main([*argv, "--position-embedding-type", "yarn", "--rotary-scaling-factor", "4",
                 "--yarn-original-max-position-embeddings", "32768"])
    assert capsys.readouterr().out == printed  # YaRN changes no byte
    assert [(p.layout, p.memory.total, p.sent) for p in yarn] == \
        [(p.layout, p.memory.total, p.sent) for p in plain]
    with pytest.raises(ValueError, match="--rotary-scaling-factor 4.0 needs"):
        main([*argv, "--rotary-scaling-factor", "4"])


# -- a YaRN Qwen3 imported, run at 4x its original context ---------------------------------------

def _every_size(checkpoint, tokens, labels, prompt):
    """Worker on 4 ranks: {D: (logits, mean loss, Generation)} of this rank at D = 4, 2, 1 (at
    D < 4 the groups beside the first repeat it)."""
    from megatron_tsp import parallel_state as ps
    from megatron_tsp.conversion.convert import load_model
    from megatron_tsp.inference.generate import generate
    from megatron_tsp.layers.vocab import masked_token_mean
    from megatron_tsp.layout import gather_to_full, scatter_to_local
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    results = {}
    for tsp_size in (4, 2, 1):
        ps.initialize_tsp(tsp_size)
        try:
            model = load_model(checkpoint)
            ids, local_labels, local_positions = (scatter_to_local(t, 1)
                                                  for t in (tokens, labels, positions))
            with torch.no_grad():
                logits = gather_to_full(model(ids, local_positions), dim=1)
                loss = model(ids, local_positions, labels=local_labels)
                _, mean = masked_token_mean(loss, torch.ones_like(loss))
            vocab = model.qwen3_config.vocab_size
            results[tsp_size] = (logits[..., :vocab], mean.item(),
                                 generate(model, prompt, MAX_NEW, keep_logits=True))
        finally:
            ps.destroy_tsp()
    return results


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(the transformers YaRN model, its directory, the imported torch_dist checkpoint)."""
    root = tmp_path_factory.mktemp("yarn")
    config = transformers.Qwen3Config(**{**HF_SHAPE, "max_position_embeddings": SEQ},
                                      rope_theta=1e6, rope_scaling=dict(CARD))
    torch.manual_seed(0)
    model = randomize(transformers.Qwen3ForCausalLM(config).eval())
    model.save_pretrained(root / "hf")
    run_distributed(import_hf, 1, str(root / "hf"), str(root / "ckpt"))
    return model, root / "hf", root / "ckpt"


@pytest.fixture(scope="module")
def runs(imported):
    model, _, checkpoint = imported
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, HF_SHAPE["vocab_size"], (2, SEQ + 1), generator=generator)
    # 100 prompt tokens (not a multiple of 2D) and the generated ones reach past 3x ORIGINAL
    prompt = torch.randint(0, HF_SHAPE["vocab_size"], (100,), generator=generator).tolist()
    ranks = run_distributed(_every_size, 4, str(checkpoint), tokens[:, :-1], tokens[:, 1:],
                            prompt)
    return tokens, prompt, ranks


def test_logits_and_loss_equal_transformers_at_4x_the_original_context(imported, runs):
    model, _, _ = imported
    tokens, _, ranks = runs
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        expected = model(input_ids=inputs).logits
    expected_loss = F.cross_entropy(expected.flatten(0, 1), labels.flatten()).item()
    for tsp_size in (1, 2, 4):
        logits, loss, _ = ranks[0][tsp_size]
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)
        assert abs(loss - expected_loss) <= 1e-5 * expected_loss, (tsp_size, loss, expected_loss)


def test_greedy_generation_equals_transformers_generate(imported, runs):
    model, _, _ = imported
    _, prompt, ranks = runs
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW,
                         do_sample=False, eos_token_id=None, pad_token_id=0, output_logits=True,
                         return_dict_in_generate=True)
    tokens, logits = out.sequences[0, len(prompt):].tolist(), torch.cat(out.logits)
    for tsp_size in (1, 2, 4):
        for rank in range(tsp_size):
            generation = ranks[rank][tsp_size][2]
            assert generation.tokens == tokens, (tsp_size, rank)
            error = (torch.stack(generation.step_logits) - logits).abs().max().item()
            assert error <= 1e-4, (tsp_size, rank, error)


def test_export_keeps_the_yarn_settings(imported, tmp_path):
    _, hf_dir, checkpoint = imported
    run_distributed(export_hf, 1, str(checkpoint), str(tmp_path / "hf"))
    source = json.loads((hf_dir / "config.json").read_text())["rope_parameters"]
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert source.items() <= exported["rope_parameters"].items()
    assert source.items() - {("rope_theta", 1e6)} <= exported["rope_scaling"].items()


def test_checkpoint_args_bring_the_yarn_settings_back(imported, monkeypatch, tmp_path):
    from megatron_tsp.config_adapters import qwen3_config_from_args
    from megatron_tsp.inference.arguments import parse_generate_args, prepare_generate_args
    _, _, checkpoint = imported
    monkeypatch.setenv("WORLD_SIZE", "1")
    expected = YarnScaling(float(FACTOR), ORIGINAL)
    load = ["--load", str(checkpoint), "--use-checkpoint-args"]
    args = prepared_args([*_LAUNCH, *load])
    assert (args.position_embedding_type, qwen3_config_from_args(args, 512).yarn) == (
        "yarn", expected)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt_ids": [1, 2, 3]}))
    argv = [*load, "--input", str(prompts), "--tokenizer-model",
            str(ROOT / "megatron_tsp" / "data" / "tokenizer")]
    assert prepare_generate_args(parse_generate_args(argv), argv).config.yarn == expected
    # given explicitly, a flag changes it: e.g. back to plain RoPE
    args = prepared_args([*_LAUNCH, *load, "--position-embedding-type", "rope"])
    assert qwen3_config_from_args(args, 512).yarn is None


def test_a_yarn_checkpoint_keeps_its_settings_whatever_flags_are_left_out(imported, monkeypatch,
                                                                         tmp_path):
    """Without --use-checkpoint-args the checkpoint's rotary embedding is still the default of
    every rotary flag not given, from --load or --pretrained-checkpoint: a resumed YaRN run
    never falls back to plain RoPE nor to Megatron's YaRN defaults (one flag given used to
    switch the check off and train with original length 4096), and a flag given changes it."""
    from megatron_tsp.config_adapters import qwen3_config_from_args
    _, _, checkpoint = imported
    monkeypatch.setenv("WORLD_SIZE", "1")
    shape = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
             "--num-query-groups", "2", "--kv-channels", "32", "--ffn-hidden-size", "128",
             "--untie-embeddings-and-output-weights"]
    saved = YarnScaling(float(FACTOR), ORIGINAL)
    empty = tmp_path / "empty"
    empty.mkdir()
    for source in (["--load", str(checkpoint)],
                   ["--load", str(empty), "--pretrained-checkpoint", str(checkpoint)]):
        for given, expected in (([], saved), (["--yarn-beta-fast", "32"], saved),
                                (["--yarn-beta-fast", "16"],
                                 dataclasses.replace(saved, beta_fast=16.0)),
                                (["--position-embedding-type", "rope"], None)):
            args = prepared_args([*_LAUNCH, *shape, *source, *given])
            assert qwen3_config_from_args(args, 512).yarn == expected, (source, given)


@pytest.mark.slow
def test_pretrain_logs_transformers_loss_at_4x_the_original_context(imported, tmp_path):
    """Every sample is the same sequence of SEQ tokens, so the first logged loss is
    transformers' loss on it (test_continued_pretraining's dataset)."""
    model, _, checkpoint = imported
    pattern = torch.randint(0, HF_SHAPE["vocab_size"], (SEQ,),
                            generator=torch.Generator().manual_seed(5))
    _repeated_dataset(tmp_path / "repeated", pattern)
    code, losses, log = run_pretrain(
        2, ["--tsp-size", "2", "--load", checkpoint, "--use-checkpoint-args", "--data-path",
            tmp_path / "repeated", "--split", "100,0,0", "--tokenizer-type", "NullTokenizer",
            "--seq-length", SEQ, "--micro-batch-size", "1", "--global-batch-size", "1",
            "--train-iters", "1", "--lr", "1e-3", "--log-interval", "1", "--eval-iters", "0"],
        tmp_path / "cache")
    assert code == 0, log[-5000:]
    expected = _hf_loss(model, torch.cat([pattern, pattern[:1]]))
    assert abs(losses[1] - expected) <= 1e-5 * expected, (losses[1], expected)
