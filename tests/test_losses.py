import torch
import torch.nn.functional as F

from dpt_core.losses import LossWeights, distillation_kl, dpt_loss


def test_loss_parts_are_zero_when_student_equals_teacher():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(4, 16), dim=-1)
    img = F.normalize(torch.randn(6, 16), dim=-1)
    logits = 100 * img @ text.t()
    parts = dpt_loss(logits, logits.clone(), torch.randint(0, 4, (6,)), text, text.clone(), LossWeights(25.0, 10.0))
    assert parts.l1.item() == 0.0
    assert abs(parts.kl.item()) < 1e-6
    assert parts.ce.item() > 0
    assert torch.isclose(parts.total, parts.ce)


def test_kl_is_teacher_to_student_summed_over_b_times_c():
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    p, q = s.softmax(-1), t.softmax(-1)
    expected = (q * (q.log() - p.log())).sum() / 15
    assert torch.allclose(distillation_kl(s, t), expected, atol=1e-6)


def test_weights_scale_their_terms():
    torch.manual_seed(1)
    st, te = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    s, t = torch.randn(2, 3), torch.randn(2, 3)
    y = torch.tensor([0, 2])
    one = dpt_loss(s, t, y, st, te, LossWeights(1.0, 1.0))
    two = dpt_loss(s, t, y, st, te, LossWeights(2.0, 3.0))
    assert torch.isclose(two.l1, 2 * one.l1) and torch.isclose(two.kl, 3 * one.kl)
    assert torch.isclose(one.l1, (st - te).abs().mean())
