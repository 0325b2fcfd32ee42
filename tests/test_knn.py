import numpy as np
import torch
import torch.nn.functional as F

from simsiam.evaluate import knn_predict


def brute_force_knn(q, bank, labels, num_classes, k, t):
    out = np.zeros((len(q), num_classes))
    for i, qi in enumerate(q):
        sims = bank @ qi
        for j in np.argsort(-sims, kind="stable")[:k]:
            out[i, labels[j]] += np.exp(sims[j] / t)
    return out


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(300, 16, generator=g, dtype=torch.float64), dim=1)
    q = F.normalize(torch.randn(50, 16, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 5, (300,), generator=g)
    for k, t in [(1, 0.1), (20, 0.1), (200, 0.2)]:
        got = knn_predict(q, bank, labels, 5, k=k, t=t, chunk=7)  # chunking must not matter
        ref = brute_force_knn(q.numpy(), bank.numpy(), labels.numpy(), 5, k, t)
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9)


def test_knn_exact_labels_on_hand_built_bank():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    bank = F.normalize(bank, dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    q = F.normalize(torch.tensor([[1.0, 0.2], [0.2, 1.0]]), dim=1)
    assert knn_predict(q, bank, labels, 2, k=3, t=0.1).argmax(1).tolist() == [0, 1]
    # k larger than the bank uses the whole bank
    assert knn_predict(q, bank, labels, 2, k=100, t=0.1).shape == (2, 2)


def test_a_small_temperature_does_not_overflow_the_votes():
    """exp(sim / t) overflows float32 below t ~ 0.011 (inf votes, argmax of ties): the same votes
    up to a factor per query, computed in float64, decide the same labels."""
    g = torch.Generator().manual_seed(1)
    bank = F.normalize(torch.randn(300, 16, generator=g), dim=1)
    q = F.normalize(torch.randn(50, 16, generator=g), dim=1)
    labels = torch.randint(0, 5, (300,), generator=g)
    for t in (0.01, 0.002):
        got = knn_predict(q, bank, labels, 5, k=20, t=t)
        assert got.isfinite().all()
        ref = brute_force_knn(q.double().numpy(), bank.double().numpy(), labels.numpy(), 5, 20, t)
        assert got.argmax(1).tolist() == ref.argmax(1).tolist()
