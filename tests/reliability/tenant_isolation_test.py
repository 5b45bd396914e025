"""Tenant isolation under concurrent load: 10,000 mixed requests from two tenants over identical
and paraphrased prompts, and no response ever names a reference of the other tenant.

The mix (deterministic, seed 8), sent by 8 client threads at once to a server with 2 workers:
  - 60 paraphrase pairs of data/paraphrase (sentence, paraphrase), ~15-40 tokens each; --min-reuse-tokens 8
    so every one of them is looked up and published.
  - Pairs 0-29 are "shared": both tenants send them. Pairs 30-59 are "A-only": tenant A sends
    Generate and LookupReference for them, tenant B only LookupReference (which never publishes),
    so their references exist only in tenant A's namespace.
  - Each request: tenant A or B (1/2 each), the sentence or its paraphrase (1/2 each), Generate
    with max_tokens=1 (15%) or LookupReference (85%). LookupReference runs the same namespace-
    scoped lookup as Generate (store lookup + token matching) without the forward pass, so the
    10,000 requests fit in a few minutes on two cores.
Checks: every request succeeds; after the run, CacheAdmin.ListReferences gives each tenant's
reference ids (no evictions, so the lists are complete); no response to tenant B reports a
reference id (hit or best candidate) in tenant A's set, and vice versa; tenant B never hits on an
A-only prompt; and both tenants do hit their own references (so the check is not vacuous).
"""

import concurrent.futures as cf
import random
import threading

import reliability_common as rc

N_REQUESTS = 10_000
GENERATE_SHARE = 0.15
N_PAIRS = 60
SHARED = 30


def test_no_cross_tenant_reuse_under_load(tmp_path):
    s = rc.make_server(tmp_path / "s", ["--min-reuse-tokens", "8", "--workers", "2",
                                         "--max-queue", "512"])
    pairs = rc.pairs()[500:500 + N_PAIRS]
    rng = random.Random(8)
    ops = []
    for _ in range(N_REQUESTS):
        tenant = rng.choice("AB")
        i = rng.randrange(N_PAIRS)
        text = pairs[i][rng.randrange(2)]
        gen = rng.random() < GENERATE_SHARE
        if tenant == "B" and i >= SHARED:
            gen = False  # B never publishes an A-only prompt
        ops.append((tenant, i, text, gen))
    clients = {"A": s.client(api_key=rc.KEY_A, timeout=120),
               "B": s.client(api_key=rc.KEY_B, timeout=120)}
    seen = []  # (tenant, pair, is_generate, hit, reference_id)
    failures = []
    lock = threading.Lock()

    def run(op):
        tenant, i, text, gen = op
        c = clients[tenant]
        try:
            if gen:
                r = c.generate(text, max_tokens=1)
                row = (tenant, i, True, r.cache.hit, r.cache.reference_id)
            else:
                r = c.lookup_reference(text)
                row = (tenant, i, False, r.hit, r.reference_id)
        except Exception as e:  # noqa: BLE001  (collected and asserted below)
            with lock:
                failures.append((op[:2], repr(e)))
            return
        with lock:
            seen.append(row)

    try:
        with cf.ThreadPoolExecutor(8) as ex:
            list(ex.map(run, ops))
        assert not failures, failures[:5]
        assert len(seen) == N_REQUESTS
        assert rc.metric(s, "semshare_cache_store_evictions_total", tier="memory") == 0
        ids_a, ids_b = rc.list_ids(s, "tenant-a"), rc.list_ids(s, "tenant-b")
        assert ids_a and ids_b and not (ids_a & ids_b)
        cross = [r for r in seen if r[4] and r[4] in (ids_a if r[0] == "B" else ids_b)]
        assert not cross, f"{len(cross)} responses named the other tenant's reference: {cross[:5]}"
        b_on_a_only = [r for r in seen if r[0] == "B" and r[1] >= SHARED and r[3]]
        assert not b_on_a_only, b_on_a_only[:5]
        # Non-vacuous: both tenants hit their own references, and A hits A-only prompts.
        hits_a = [r for r in seen if r[0] == "A" and r[3]]
        hits_b = [r for r in seen if r[0] == "B" and r[3]]
        assert all(r[4] in ids_a for r in hits_a) and all(r[4] in ids_b for r in hits_b)
        assert len(hits_a) > 1000 and len(hits_b) > 500, (len(hits_a), len(hits_b))
        assert any(r[1] >= SHARED for r in hits_a)
        m = s.metrics()
        n_gen = sum(1 for o in ops if o[3])
        assert m.get("semshare_requests_total", method="Generate", code="OK") == n_gen
        assert m.get("semshare_requests_total", method="LookupReference",
                     code="OK") == N_REQUESTS - n_gen
        print(f"mix: {n_gen} Generate, {N_REQUESTS - n_gen} LookupReference; hits A "
              f"{len(hits_a)}, B {len(hits_b)}; references A {len(ids_a)}, B {len(ids_b)}")
    finally:
        for c in clients.values():
            c.close()
        rc.stop_ok(s)
