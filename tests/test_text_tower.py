"""The [CLS]-only text tower equals the full BERT forward, in eval and (mask for mask) in train mode."""
import torch

from dpt_core.text import TextEncoder
from dpt_core.text_tower import cls_hidden_state, supports_cls_only


def _prompts(tiny, texts):
    batch = tiny.tokenizer(texts)
    return tiny.word_embeddings(batch.ids), batch.mask


def _full(bert, embeds, mask):
    return bert(inputs_embeds=embeds, attention_mask=mask).last_hidden_state[:, 0]


def test_the_tiny_tower_takes_the_cls_only_path(tiny):
    assert supports_cls_only(tiny.bert, tiny.text_pooler)
    assert not supports_cls_only(torch.nn.Linear(2, 2), tiny.text_pooler)


def test_cls_only_equals_the_full_forward_padded_or_not(tiny):
    for texts in (["a photo of a cat.", "a photo of a dog."],  # same length: no mask
                  ["a photo of a cat.", "a much longer photo of a very small dog indeed."]):  # padded
        embeds, mask = _prompts(tiny, texts)
        with torch.no_grad():
            fast, full = cls_hidden_state(tiny.bert, embeds, mask), _full(tiny.bert, embeds, mask)
        assert fast.shape == full.shape
        assert torch.allclose(fast, full, atol=1e-5), (fast - full).abs().max()


def test_gradients_reach_the_input_embeddings_as_in_the_full_forward(tiny):
    embeds, mask = _prompts(tiny, ["a photo of a cat.", "a photo of a tiny dog."])
    grads = []
    for fn in (cls_hidden_state, _full):
        x = embeds.detach().clone().requires_grad_(True)
        fn(tiny.bert, x, mask).square().sum().backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5), (grads[0] - grads[1]).abs().max()


def test_train_mode_drops_out_and_is_seeded(tiny):
    from transformers import BertModel

    from dpt_core.tiny import tiny_bert_config

    # the tiny tower has no dropout (dpt_core.tiny says why): the same weights with BiomedBERT's 0.1
    config = tiny_bert_config()
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.1
    bert = BertModel(config, add_pooling_layer=False)
    bert.load_state_dict(tiny.bert.state_dict(), strict=False)
    embeds, mask = _prompts(tiny, ["a photo of a cat.", "a photo of a dog."])
    with torch.no_grad():
        ref = cls_hidden_state(bert.eval(), embeds, mask)
        assert torch.allclose(ref, _full(tiny.bert, embeds, mask), atol=1e-5)  # same weights
        bert.train()
        torch.manual_seed(0)
        a = cls_hidden_state(bert, embeds, mask)
        torch.manual_seed(0)
        b = cls_hidden_state(bert, embeds, mask)
        c = cls_hidden_state(bert, embeds, mask)
    assert torch.equal(a, b) and not torch.equal(a, c)  # seeded, and the dropout is on
    assert not torch.allclose(a, ref, atol=1e-3)


def test_the_encoder_uses_it_for_prompts(tiny):
    embeds, mask = _prompts(tiny, ["a photo of a cat.", "a photo of a dog."])
    enc = TextEncoder(tiny)
    with torch.no_grad():
        feats = enc.forward_embeddings(embeds, mask)
        ref = tiny.text_proj(_full(tiny.bert, embeds, mask))
    assert torch.allclose(feats, ref, atol=1e-5)
