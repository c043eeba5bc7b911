"""Declared scope limits map generated cases into the implementation's scope, visibly."""

from __future__ import annotations

import dataclasses

import torch
from hypothesis import given

import strategies as kst
from harness import scope
from harness.engine.shapes import RankShape, RequestPlan
from strategies.cases import KvSpec, RequestSpec, TpTopology, TransferCase

CASE = TransferCase(TpTopology(2, 2, 1, prefill_pp=2, decode_pp=1), KvSpec(2, 2, torch.float32, 4),
                    RequestSpec(5, 0, 1, (0, 1), 3, (1, 2), 3), seed=0, nan_payloads=False)


class Narrow:
    limits = frozenset({"whole_pages", "no_pipeline_fan_in"})


def test_no_limits_means_the_case_itself():
    assert scope.fit(object(), CASE) is CASE


def test_limits_fill_the_last_page_and_drop_pipeline_fan_in():
    fitted = scope.fit(Narrow(), CASE)
    assert fitted.request.num_tokens == 8 and fitted.topology.prefill_pp == fitted.topology.decode_pp == 1
    assert fitted.request.prefill_page_table == CASE.request.prefill_page_table  # still enough pages


class NoPipeline:
    limits = frozenset({"no_decode_pipeline", "no_pipeline_fan_in"})


class NoDecodePipeline:
    limits = frozenset({"no_decode_pipeline"})


def test_no_decode_pipeline_keeps_prefill_stages_unless_fan_in_is_declared_too():
    case = TransferCase(TpTopology(2, 1, 2, prefill_pp=4, decode_pp=2), KvSpec(4, 2, torch.float32, 4),
                        CASE.request, seed=0, nan_payloads=False)
    assert (scope.fit(NoDecodePipeline(), case).topology.prefill_pp, scope.fit(NoDecodePipeline(), case).topology.decode_pp) == (4, 1)
    both = scope.fit(NoPipeline(), case).topology
    assert (both.prefill_pp, both.decode_pp) == (1, 1)
    shape = scope.fit(NoDecodePipeline(), RankShape(case.topology, case.kv, decode_index=3))
    assert shape.decode_index == 1 and shape.layers == range(0, 4)  # stage 1, TP rank 1 -> the one stage's rank 1


@given(case=kst.transfer_cases(page_size_pairs=kst.page_size_pairs()))
def test_fitted_cases_are_within_scope(case):
    fitted = scope.fit(Narrow(), case)
    assert fitted.request.num_tokens % fitted.kv.decode_page_size == 0
    assert fitted.request.num_tokens <= len(fitted.request.decode_page_table) * fitted.kv.decode_page_size
    assert fitted.request.num_tokens <= len(fitted.request.prefill_page_table) * fitted.kv.page_size
    assert fitted.topology.prefill_pp == fitted.topology.decode_pp
    assert fitted.kv.num_layers % fitted.topology.prefill_pp == 0


def test_rank_shapes_plans_and_tuples_are_fitted_too():
    shape = RankShape(CASE.topology, CASE.kv)
    fitted_shape, fitted_case, other = scope.fit(Narrow(), (shape, CASE, 7))
    assert fitted_shape.topology.prefill_pp == 1 and fitted_case == scope.fit(Narrow(), CASE) and other == 7
    assert scope.fit(Narrow(), [shape])[0] == fitted_shape
    assert scope.fit_plan(Narrow(), RequestPlan(5, 0, 1, 0), page_size=4).num_tokens == 8
    assert scope.fit_plan(object(), RequestPlan(5, 0, 1, 0), page_size=4).num_tokens == 5


def test_contiguous_layers_limit_maps_every_pool_layout_to_contiguous():
    class ContiguousOnly:
        limits = frozenset({"contiguous_layers"})

    fused = kst.PoolLayout(("kv", "head", "token", "dim"), (1, 0, 2, 0), lead=1)
    case = dataclasses.replace(CASE, layout=fused)
    assert scope.fit(ContiguousOnly(), case) == dataclasses.replace(case, layout=kst.CONTIGUOUS)
    assert scope.fit(Narrow(), case).layout == fused  # other limits leave the layout alone
    shape = RankShape(CASE.topology, CASE.kv, layout=fused)
    assert scope.fit(ContiguousOnly(), shape) == dataclasses.replace(shape, layout=kst.CONTIGUOUS)
