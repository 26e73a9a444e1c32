"""A corpus of real Hugging Face `transformers` architectures, built from tiny configs.

What users bring is not Kiln's own zoo: these are the classes `transformers` ships, built with
their default flags (`use_cache` included) and called as their documentation calls them, with
random weights (nothing is downloaded). Sizes are tiny (hidden 32, two layers) so the whole
corpus compiles in minutes; the architecture — attention variants, position schemes, caches,
patch embeddings, convolutional feature extractors — is what the corpus exercises.

`CORPUS[name]()` returns `(model, example_inputs, example_kwargs)`; the tests and
`benchmarks/coverage.py` compile every entry and compare it with eager.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

SEQUENCE = 8
VOCAB = 99
IMAGE = 32

Built = tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]

# the small sizes every text config shares, in each family's own spelling
_TEXT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=64)
_DECODER = dict(_TEXT, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_MOE = dict(_DECODER, intermediate_size=32, num_experts_per_tok=2)
_VISION = dict(image_size=IMAGE, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=37)


@dataclass(frozen=True)
class Architecture:
    """One corpus entry: its family (for the coverage table) and how to build it."""

    family: str
    build: Callable[[], Built]

    def __call__(self) -> Built:
        torch.manual_seed(0)
        model, args, kwargs = self.build()
        return model.eval(), args, kwargs


def _ids(batch: int = 1, length: int = SEQUENCE) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def _text(model_class: str, config_class: str, **config: Any) -> Callable[[], Built]:
    """A model called with token ids and an attention mask, as tokenizers hand them over."""

    def build() -> Built:
        import transformers

        model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config))
        ids = _ids()
        return model, (ids,), {"attention_mask": torch.ones_like(ids)}

    return build


def _ids_only(model_class: str, config_class: str, **config: Any) -> Callable[[], Built]:
    def build() -> Built:
        import transformers

        return getattr(transformers, model_class)(getattr(transformers, config_class)(**config)), (_ids(),), {}

    return build


def _seq2seq(model_class: str, config_class: str, **config: Any) -> Callable[[], Built]:
    """Encoder-decoders called for one teacher-forced step: source ids and decoder ids."""

    def build() -> Built:
        import transformers

        model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config))
        ids = _ids()
        return model, (ids,), {"attention_mask": torch.ones_like(ids), "decoder_input_ids": _ids(length=4)}

    return build


def _image(model_class: str, config_class: str, size: int = IMAGE, **config: Any) -> Callable[[], Built]:
    def build() -> Built:
        import transformers

        model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config))
        return model, (torch.randn(1, config.get("num_channels", 3), size, size),), {}

    return build


def _audio(model_class: str, config_class: str, samples: int = 1600, **config: Any) -> Callable[[], Built]:
    def build() -> Built:
        import transformers

        model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config))
        return model, (torch.randn(1, samples),), {}

    return build


def _whisper_encoder() -> Built:
    import transformers

    config = transformers.WhisperConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=16, max_source_positions=16,
        max_target_positions=16)
    return transformers.WhisperForAudioClassification(config), (torch.randn(1, 16, 32),), {}


def _clip_vision() -> Built:
    import transformers

    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**_VISION)), (torch.randn(1, 3, IMAGE, IMAGE),), {}


def _clip_text() -> Built:
    import transformers

    config = transformers.CLIPTextConfig(**{k: v for k, v in _TEXT.items()})
    ids = _ids()
    return transformers.CLIPTextModel(config), (ids,), {"attention_mask": torch.ones_like(ids)}


def _siglip_vision() -> Built:
    import transformers

    return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**_VISION)), (torch.randn(1, 3, IMAGE, IMAGE),), {}


_BART = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
             decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64,
             pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2)
def _patchtst() -> Built:
    import transformers

    config = transformers.PatchTSTConfig(num_input_channels=3, context_length=32, patch_length=8, patch_stride=8, d_model=16,
                                         num_attention_heads=2, num_hidden_layers=2, ffn_dim=32)
    return transformers.PatchTSTModel(config), (torch.randn(1, 32, 3),), {}


def _detr() -> Built:
    import transformers

    backbone = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"])
    config = transformers.DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=16,
                                     encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                                     encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=5)
    return transformers.DetrForObjectDetection(config), (torch.randn(1, 3, 64, 64),), {}


def _audio_spectrogram() -> Built:
    import transformers

    config = transformers.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                                    num_mel_bins=16, max_length=32, patch_size=8, frequency_stride=8, time_stride=8)
    return transformers.ASTModel(config), (torch.randn(1, 32, 16),), {}


_DIFFUSION_BLOCKS = dict(layers_per_block=1, block_out_channels=(16, 32), norm_num_groups=8)


def _unet() -> Built:
    import diffusers

    model = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), **_DIFFUSION_BLOCKS)
    return model, (torch.randn(1, 3, 16, 16), torch.tensor([10])), {"return_dict": False}


def _unet_conditioned() -> Built:
    import diffusers

    model = diffusers.UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, cross_attention_dim=16, attention_head_dim=4,
                                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **_DIFFUSION_BLOCKS)
    return model, (torch.randn(1, 4, 16, 16), torch.tensor([10]), torch.randn(1, 5, 16)), {"return_dict": False}


class _Decoder(torch.nn.Module):
    """A VAE's decoder, as a latent-diffusion pipeline calls it after the last denoising step."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample


def _vae_decoder() -> Built:
    import diffusers

    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, **_DIFFUSION_BLOCKS)
    return _Decoder(vae), (torch.randn(1, 4, 8, 8),), {}


def _diffusion_transformer() -> Built:
    import diffusers

    model = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=2, sample_size=8,
                                            patch_size=2, num_embeds_ada_norm=10, norm_num_groups=8)
    return model, (torch.randn(1, 4, 8, 8), torch.tensor([3]), torch.tensor([1])), {"return_dict": False}


_T5 = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
           pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
_CONVNET = dict(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1])

CORPUS: dict[str, Architecture] = {
    # text encoders
    "bert": Architecture("text encoder", _text("BertModel", "BertConfig", **_TEXT)),
    "roberta": Architecture("text encoder", _text("RobertaModel", "RobertaConfig", **_TEXT, pad_token_id=1)),
    "xlm_roberta": Architecture("text encoder", _text("XLMRobertaModel", "XLMRobertaConfig", **_TEXT, pad_token_id=1)),
    "distilbert": Architecture("text encoder", _text(
        "DistilBertModel", "DistilBertConfig", vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
        max_position_embeddings=64)),
    "albert": Architecture("text encoder", _text("AlbertModel", "AlbertConfig", **_TEXT, embedding_size=16)),
    "electra": Architecture("text encoder", _text("ElectraModel", "ElectraConfig", **_TEXT, embedding_size=16)),
    "deberta_v2": Architecture("text encoder", _text("DebertaV2Model", "DebertaV2Config", **_TEXT)),
    "deberta": Architecture("text encoder", _text("DebertaModel", "DebertaConfig", **_TEXT)),
    "mpnet": Architecture("text encoder", _text("MPNetModel", "MPNetConfig", **_TEXT)),
    "mobilebert": Architecture("text encoder", _text(
        "MobileBertModel", "MobileBertConfig", **dict(_TEXT, hidden_size=32, intermediate_size=32), embedding_size=16,
        intra_bottleneck_size=16, true_hidden_size=16, num_feedforward_networks=2)),
    "squeezebert": Architecture("text encoder", _text(
        "SqueezeBertModel", "SqueezeBertConfig", **dict(_TEXT, intermediate_size=36), embedding_size=32, q_groups=2, k_groups=2, v_groups=2,
        post_attention_groups=2, intermediate_groups=2, output_groups=2)),
    "convbert": Architecture("text encoder", _text("ConvBertModel", "ConvBertConfig", **_TEXT, embedding_size=32)),
    "ernie": Architecture("text encoder", _text("ErnieModel", "ErnieConfig", **_TEXT)),
    "funnel": Architecture("text encoder", _text(
        "FunnelModel", "FunnelConfig", vocab_size=VOCAB, block_sizes=[1, 1], d_model=32, n_head=4, d_head=8,
        d_inner=37)),
    "modernbert": Architecture("text encoder", _text(
        "ModernBertModel", "ModernBertConfig", **_TEXT, pad_token_id=0, global_attn_every_n_layers=2,
        local_attention=4)),
    "t5_encoder": Architecture("text encoder", _text("T5EncoderModel", "T5Config", **_T5)),
    "electra_mlm": Architecture("text encoder", _text("ElectraForMaskedLM", "ElectraConfig", **_TEXT, embedding_size=16)),
    "canine": Architecture("text encoder", _text(
        "CanineModel", "CanineConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        downsampling_rate=2, num_hash_buckets=64)),
    "bigbird": Architecture("text encoder", _text("BigBirdModel", "BigBirdConfig", **_TEXT, attention_type="original_full")),
    "roformer": Architecture("text encoder", _text("RoFormerModel", "RoFormerConfig", **_TEXT)),
    "clip_text": Architecture("text encoder", _clip_text),
    # decoder language models, called as for a forward pass (use_cache at its default)
    "gpt2": Architecture("decoder LM", _text(
        "GPT2LMHeadModel", "GPT2Config", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)),
    "llama": Architecture("decoder LM", _text("LlamaForCausalLM", "LlamaConfig", **_DECODER)),
    "mistral": Architecture("decoder LM", _text("MistralForCausalLM", "MistralConfig", **_DECODER, sliding_window=4)),
    "qwen2": Architecture("decoder LM", _text("Qwen2ForCausalLM", "Qwen2Config", **_DECODER)),
    "qwen3": Architecture("decoder LM", _text("Qwen3ForCausalLM", "Qwen3Config", **_DECODER, head_dim=8)),
    "phi3": Architecture("decoder LM", _text("Phi3ForCausalLM", "Phi3Config", **_DECODER)),
    "phi": Architecture("decoder LM", _text("PhiForCausalLM", "PhiConfig", **_DECODER)),
    "gemma": Architecture("decoder LM", _text("GemmaForCausalLM", "GemmaConfig", **_DECODER, head_dim=8)),
    "gemma2": Architecture("decoder LM", _text("Gemma2ForCausalLM", "Gemma2Config", **_DECODER, head_dim=8,
                                               sliding_window=4)),
    "opt": Architecture("decoder LM", _text(
        "OPTForCausalLM", "OPTConfig", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        ffn_dim=37, max_position_embeddings=64, word_embed_proj_dim=32)),
    "gpt_neox": Architecture("decoder LM", _text("GPTNeoXForCausalLM", "GPTNeoXConfig", **_TEXT)),
    "falcon": Architecture("decoder LM", _text(
        "FalconForCausalLM", "FalconConfig", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4)),
    "bloom": Architecture("decoder LM", _text(
        "BloomForCausalLM", "BloomConfig", vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)),
    "gptj": Architecture("decoder LM", _text(
        "GPTJForCausalLM", "GPTJConfig", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
        n_positions=64)),
    "stablelm": Architecture("decoder LM", _text("StableLmForCausalLM", "StableLmConfig", **_DECODER)),
    "xglm": Architecture("decoder LM", _text(
        "XGLMForCausalLM", "XGLMConfig", vocab_size=VOCAB, d_model=32, num_layers=2, attention_heads=4, ffn_dim=37,
        max_position_embeddings=64)),
    "codegen": Architecture("decoder LM", _text(
        "CodeGenForCausalLM", "CodeGenConfig", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4)),
    "cohere": Architecture("decoder LM", _text("CohereForCausalLM", "CohereConfig", **_DECODER)),
    "olmo2": Architecture("decoder LM", _text("Olmo2ForCausalLM", "Olmo2Config", **_DECODER)),
    "gemma3_text": Architecture("decoder LM", _text(
        "Gemma3ForCausalLM", "Gemma3TextConfig", **_DECODER, head_dim=8, sliding_window=4)),
    "ctrl": Architecture("decoder LM", _text(
        "CTRLLMHeadModel", "CTRLConfig", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, dff=37, n_positions=64)),
    "biogpt": Architecture("decoder LM", _text("BioGptForCausalLM", "BioGptConfig", **_TEXT)),
    "xlnet": Architecture("decoder LM", _text("XLNetModel", "XLNetConfig", vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_inner=37)),
    # state-space decoders
    "mamba": Architecture("state-space LM", _text(
        "MambaForCausalLM", "MambaConfig", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=4, expand=2)),
    "olmo": Architecture("decoder LM", _text("OlmoForCausalLM", "OlmoConfig", **_DECODER)),
    "starcoder2": Architecture("decoder LM", _text("Starcoder2ForCausalLM", "Starcoder2Config", **_DECODER)),
    "granite": Architecture("decoder LM", _text("GraniteForCausalLM", "GraniteConfig", **_DECODER)),
    # mixture-of-experts decoders: top-k routing, tokens sorted by expert, grouped expert products (torch's
    # grouped_mm in eager wants 16-byte strides: an even intermediate size)
    "mixtral": Architecture("MoE decoder LM", _text("MixtralForCausalLM", "MixtralConfig", **_MOE, num_local_experts=4)),
    "qwen2_moe": Architecture("MoE decoder LM", _text("Qwen2MoeForCausalLM", "Qwen2MoeConfig", **_MOE, num_experts=4,
                                                      moe_intermediate_size=16, shared_expert_intermediate_size=32)),
    "qwen3_moe": Architecture("MoE decoder LM", _text("Qwen3MoeForCausalLM", "Qwen3MoeConfig", **_MOE, num_experts=4,
                                                      moe_intermediate_size=16, head_dim=8)),
    "olmoe": Architecture("MoE decoder LM", _text("OlmoeForCausalLM", "OlmoeConfig", **_MOE, num_experts=4)),
    "granitemoe": Architecture("MoE decoder LM", _text("GraniteMoeForCausalLM", "GraniteMoeConfig", **_MOE, num_local_experts=4)),
    "phimoe": Architecture("MoE decoder LM", _text("PhimoeForCausalLM", "PhimoeConfig", **_MOE, num_local_experts=4)),
    "deepseek_v3": Architecture("MoE decoder LM", _text(
        "DeepseekV3ForCausalLM", "DeepseekV3Config", **dict(_MOE, num_key_value_heads=4), n_routed_experts=4,
        moe_intermediate_size=16, n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=16,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, n_group=1, topk_group=1)),
    "jamba": Architecture("MoE decoder LM", _text(
        "JambaForCausalLM", "JambaConfig", **_MOE, num_experts=4, attn_layer_period=2, attn_layer_offset=1,
        expert_layer_period=2, expert_layer_offset=1, mamba_d_state=4, mamba_dt_rank=4, mamba_expand=2)),
    # encoder-decoders, one teacher-forced step
    "bart": Architecture("encoder-decoder", _seq2seq("BartForConditionalGeneration", "BartConfig", **_BART)),
    "t5": Architecture("encoder-decoder", _seq2seq("T5ForConditionalGeneration", "T5Config", **_T5)),
    "marian": Architecture("encoder-decoder", _seq2seq("MarianMTModel", "MarianConfig", **_BART)),
    "pegasus": Architecture("encoder-decoder", _seq2seq("PegasusForConditionalGeneration", "PegasusConfig", **_BART)),
    # vision transformers and CNNs
    "vit": Architecture("vision", _image("ViTModel", "ViTConfig", **_VISION)),
    "deit": Architecture("vision", _image("DeiTModel", "DeiTConfig", **_VISION)),
    "beit": Architecture("vision", _image("BeitModel", "BeitConfig", **_VISION, use_relative_position_bias=True)),
    "dinov2": Architecture("vision", _image("Dinov2Model", "Dinov2Config", **_VISION)),
    "swin": Architecture("vision", _image(
        "SwinModel", "SwinConfig", image_size=IMAGE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
        window_size=4)),
    "convnext": Architecture("vision", _image("ConvNextModel", "ConvNextConfig", num_stages=2, **_CONVNET)),
    "resnet": Architecture("vision", _image("ResNetModel", "ResNetConfig", embedding_size=8, **_CONVNET)),
    "regnet": Architecture("vision", _image("RegNetModel", "RegNetConfig", embedding_size=8, groups_width=8,
                                            **_CONVNET)),
    "mobilenet_v2": Architecture("vision", _image("MobileNetV2Model", "MobileNetV2Config", image_size=IMAGE,
                                                  depth_multiplier=0.25)),
    "segformer": Architecture("vision", _image(
        "SegformerModel", "SegformerConfig", num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
        hidden_sizes=[8, 16], num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2])),
    "convnextv2": Architecture("vision", _image("ConvNextV2Model", "ConvNextV2Config", num_stages=2, **_CONVNET)),
    "mobilevit": Architecture("vision", _image(
        "MobileViTModel", "MobileViTConfig", image_size=IMAGE, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 16, 16, 16, 16, 32])),
    "levit": Architecture("vision", _image(
        "LevitModel", "LevitConfig", image_size=IMAGE, hidden_sizes=[16, 24, 32], num_attention_heads=[1, 2, 2], depths=[1, 1, 1],
        key_dim=[8, 8, 8])),
    "pvt": Architecture("vision", _image(
        "PvtModel", "PvtConfig", image_size=IMAGE, num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[8, 16],
        sequence_reduction_ratios=[2, 1], num_attention_heads=[1, 2], patch_sizes=[4, 2], strides=[4, 2], mlp_ratios=[2, 2])),
    "swinv2": Architecture("vision", _image(
        "Swinv2Model", "Swinv2Config", image_size=IMAGE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4)),
    "poolformer": Architecture("vision", _image(
        "PoolFormerModel", "PoolFormerConfig", num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
        strides=[4, 2], padding=[2, 1], pool_size=3, mlp_ratio=2.0)),
    "focalnet": Architecture("vision", _image(
        "FocalNetModel", "FocalNetConfig", image_size=IMAGE, patch_size=4, embed_dim=16, depths=[1, 1], focal_levels=[2, 2],
        focal_windows=[3, 3])),
    "mobilenet_v1": Architecture("vision", _image("MobileNetV1Model", "MobileNetV1Config", image_size=IMAGE, depth_multiplier=0.25)),
    # dense prediction and detection
    "dpt": Architecture("dense prediction", _image("DPTModel", "DPTConfig", **_VISION)),
    "glpn": Architecture("dense prediction", _image(
        "GLPNModel", "GLPNConfig", num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
        num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=16)),
    "yolos": Architecture("detection", _image(
        "YolosModel", "YolosConfig", image_size=[IMAGE, IMAGE], patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=37, num_detection_tokens=4)),
    "detr": Architecture("detection", _detr),
    # time series
    "patchtst": Architecture("time series", _patchtst),
    # diffusion (diffusers)
    "unet2d": Architecture("diffusion", _unet),
    "unet2d_condition": Architecture("diffusion", _unet_conditioned),
    "vae_decoder": Architecture("diffusion", _vae_decoder),
    "dit": Architecture("diffusion", _diffusion_transformer),
    "clip_vision": Architecture("multimodal tower", _clip_vision),
    "siglip_vision": Architecture("multimodal tower", _siglip_vision),
    # speech encoders
    "wav2vec2": Architecture("speech", _audio(
        "Wav2Vec2Model", "Wav2Vec2Config", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4)),
    "hubert": Architecture("speech", _audio(
        "HubertModel", "HubertConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4)),
    "whisper_encoder": Architecture("speech", _whisper_encoder),
    "audio_spectrogram_transformer": Architecture("speech", _audio_spectrogram),
}

