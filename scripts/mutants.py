#!/usr/bin/env python
"""One-line mutants the gate must kill (DESIGN.md §4): a test is only as good as the bug it catches.

Each mutant replaces one exact fragment of one source line. The working tree's files (tracked and
untracked-but-not-ignored) are copied to a scratch directory; every mutant is applied there, one at
a time, and its tests run with this repo's virtualenv, the scratch copy first on PYTHONPATH (the
venv's editable install of the repo is a meta-path finder appended after sys.path, so the copy
wins; checked before anything runs). The unmutated tests must pass first. A fragment that is not
found exactly once fails the run: the code drifted and the mutant must be updated.

    .venv/bin/python scripts/mutants.py            # all mutants; exit 1 if any survives
    .venv/bin/python scripts/mutants.py --list
    .venv/bin/python scripts/mutants.py --only bonus_row_k_minus_1 --only residual_is_p

To add a mutant, append a Mutant(...) to MUTANTS: the fragment, its replacement, and the few
pytest node ids that should catch it (each mutant should run well under a minute).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"
TIMEOUT_S = 300  # a mutant that hangs its tests this long counts as killed (the gate would time out)


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str          # relative to the repo root
    original: str      # exact fragment; must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]  # pytest node ids that must fail under the mutant


CORE = "inference_engine/engine/core.py"
SPEC = "inference_engine/engine/speculator.py"
ACCEPT = "inference_engine/engine/acceptance.py"
SAMPLING = "inference_engine/engine/sampling.py"
STORE = "inference_engine/cache/session_store.py"
EQ = "tests/test_speculative_equivalence.py"
ACC = "tests/test_acceptance.py"
PROP = "tests/test_speculative_proposers.py"
LP = "tests/test_logprobs_penalties.py"
SS = "tests/test_session_store.py"
AENG = "inference_engine/engine/async_engine.py"
APP = "inference_engine/http/app.py"
GEN = "inference_engine/http/generation.py"
HTTP = "tests/test_http_server.py"
ROB = "tests/test_robustness.py"
ISO = "tests/test_isolation.py"
ENG = "tests/test_engine_faults.py"
ADAPT = "inference_engine/engine/adaptive.py"
NATIVE = "inference_engine/models/csrc/native.cpp"
BLOCKS = "inference_engine/models/csrc/blocks.h"
NAT = "tests/test_native.py"
DIRECTORY = "inference_engine/cluster/directory.py"
DIR_TEST = "tests/test_session_directory.py"
COST = "inference_engine/engine/cost_model.py"
AD = "tests/test_adaptive.py"
VW = "inference_engine/models/verify_weights.py"
QUANT = "inference_engine/models/quantize.py"
FAST = "inference_engine/models/fast.py"
GRAPHS = "inference_engine/models/graph_step.py"
GRAPH_TEST = "tests/test_fast_path.py::test_graph_step_equals_eager"
SCREEN = "inference_engine/http/screen.py"
GRAMMAR_TEST = "tests/test_structured_output.py"
HOSTILE = "tests/test_hostile_input.py"

MUTANTS: list[Mutant] = [
    # -- rollback ------------------------------------------------------------------------------
    Mutant("trim_one_too_few", CORE,
           "req.cache.trim(out.num_drafted - out.num_accepted)", "req.cache.trim(out.num_drafted - out.num_accepted - 1)",
           (f"{EQ}::test_greedy_equals_plain_for_every_k[draft]",)),
    Mutant("trim_one_too_few_after_partial", CORE,
           "req.cache.trim(out.num_drafted - out.num_accepted)",
           "req.cache.trim(out.num_drafted - out.num_accepted - (0 < out.num_accepted < out.num_drafted))",
           (f"{EQ}::test_greedy_equals_plain_for_every_k[suffix]",)),
    Mutant("no_rollback", CORE,
           "req.cache.trim(out.num_drafted - out.num_accepted)", "req.cache.trim(0)",
           (f"{EQ}::test_greedy_equals_plain_for_every_k[ngram]",)),
    # -- acceptance ----------------------------------------------------------------------------
    Mutant("greedy_accepts_smaller_ids", ACCEPT,
           "while n < len(draft) and draft[n] == target[n]:", "while n < len(draft) and draft[n] <= target[n]:",
           (f"{EQ}::test_greedy_equals_plain_for_every_k[suffix]",)),
    Mutant("greedy_accepts_mismatch", ACCEPT,
           "while n < len(draft) and draft[n] == target[n]:", "while n < len(draft) and draft[n] != target[n]:",
           (f"{EQ}::test_greedy_equals_plain_for_every_k[ngram]",)),
    Mutant("point_mass_accepts_everything", ACCEPT,
           "if i == len(draft) or token != draft[i]:", "if i == len(draft):",
           (f"{ACC}::test_point_mass_conditionals_match_target",)),
    Mutant("point_mass_bonus_row_k_minus_1", ACCEPT,
           "token = int(sample(probs[i : i + 1], generator_at(i))[0])",
           "token = int(sample(probs[i - (i == len(draft) > 0) : i - (i == len(draft) > 0) + 1], generator_at(i))[0])",
           (f"{ACC}::test_point_mass_conditionals_match_target",)),
    Mutant("rejection_accepts_everything", ACCEPT,
           "ok = (u * q_d < p_d).tolist()", "ok = [True] * k",
           (f"{ACC}::test_rejection_sampling_conditionals_match_target",)),
    Mutant("bonus_row_k_minus_1", ACCEPT,
           "token = int(sample(probs[k : k + 1], generator)[0])", "token = int(sample(probs[k - 1 : k], generator)[0])",
           (f"{ACC}::test_rejection_sampling_conditionals_match_target",)),
    Mutant("residual_is_p", ACCEPT,
           "residual = (probs[i] - draft_probs[i].to(probs.device)).clamp_min(0)", "residual = probs[i].clone()",
           (f"{ACC}::test_rejection_sampling_conditionals_match_target",)),
    Mutant("draft_uniforms_unseeded", ACCEPT,  # found by mutmut (docs/testing.md)
           "u = torch.rand(k, generator=generator, device=probs.device)", "u = torch.rand(k, device=probs.device)",
           (f"{PROP}::test_seeded_draft_model_sampling_is_reproducible",)),
    # end to end: the same acceptance bugs through the engine with a real draft model
    Mutant("e2e_bonus_row_k_minus_1", ACCEPT,
           "token = int(sample(probs[k : k + 1], generator)[0])", "token = int(sample(probs[k - 1 : k], generator)[0])",
           (f"{PROP}::test_draft_model_sampling_matches_verifier_distribution",)),
    Mutant("e2e_rejection_accepts_everything", ACCEPT,
           "ok = (u * q_d < p_d).tolist()", "ok = [True] * k",
           (f"{PROP}::test_draft_model_sampling_matches_verifier_distribution",)),
    Mutant("e2e_residual_is_p", ACCEPT,
           "residual = (probs[i] - draft_probs[i].to(probs.device)).clamp_min(0)", "residual = probs[i].clone()",
           (f"{PROP}::test_draft_model_sampling_matches_verifier_distribution",)),
    # -- sampling ------------------------------------------------------------------------------
    Mutant("penalty_ignores_drafts", SAMPLING,
           "counts[draft[i - 1]] += 1", "counts[draft[i - 1]] += 0",
           (f"{LP}::test_penalties_see_accepted_drafts",)),
    Mutant("min_p_threshold_across_rows", SAMPLING,  # found by mutmut (docs/testing.md)
           "probs.amax(-1, keepdim=True)", "probs.amax(keepdim=True)",
           ("tests/test_sampling.py::test_filters_apply_to_each_verify_row_on_its_own",)),
    # shared by plain and speculative decoding: only an independent reference (hf_greedy) sees it
    Mutant("penalties_swapped", SAMPLING,
           "x[i] -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()",
           "x[i] -= params.presence_penalty * counts + params.frequency_penalty * (counts > 0).float()",
           (f"{LP}::test_penalties_see_accepted_drafts[frequency_penalty-0.5-ngram]",)),
    Mutant("seed_keyed_by_step_not_position", CORE,
           "position_generator(seed, start + i, device)", "position_generator(seed, i, device)",
           (f"{EQ}::test_seeded_sampling_equals_plain[suffix]",)),
    Mutant("logprobs_from_last_rows", CORE,
           "lp = logits[: len(tokens)].float().log_softmax(-1)", "lp = logits[-len(tokens) :].float().log_softmax(-1)",
           (f"{LP}::test_logprobs_unchanged_by_speculation",)),
    # -- stopping ------------------------------------------------------------------------------
    Mutant("stop_token_ignored_in_emit", CORE,
           "if tok in req.stop_ids or stop_requested:", "if stop_requested:",
           ("tests/test_engine.py::test_stop_token_ids_end_generation",)),
    Mutant("stop_string_holds_back_too_little", "inference_engine/tokenizer.py",
           "range(min(len(s) - 1, len(buf)), 0, -1)", "range(min(len(s) - 2, len(buf)), 0, -1)",
           ("tests/test_tokenizer.py",)),
    # -- sessions and prefix cache -------------------------------------------------------------
    Mutant("prefix_keep_includes_last_prompt_token", CORE,
           "keep = min(cache.length, shared, len(req.prompt_ids) - 1)", "keep = min(cache.length, shared, len(req.prompt_ids))",
           (f"{SS}::test_prefix_cache_copies_a_partly_shared_entry",)),
    Mutant("attach_keeps_a_stale_position", CORE,
           "cache.trim(cache.length - keep)", "cache.trim(max(0, cache.length - keep - 1))",
           (f"{SS}::test_inv1_cache_contents_after_a_diverging_prompt",)),
    Mutant("common_prefix_one_too_long", STORE,
           "if a[i] != b[i]:\n            return i\n", "if a[i] != b[i]:\n            return i + 1\n",
           (f"{SS}::test_inv1_cache_contents_after_a_diverging_prompt",)),
    Mutant("fit_keeps_newest_token", STORE,
           "cache.trim(cache.length - max(0, len(history) - 1))", "cache.trim(cache.length - max(0, len(history)))",
           (f"{SS}::test_inv1_stop_inside_accepted_draft_is_trimmed",)),
    Mutant("check_in_forgets_output", STORE,
           "s.history = list(history)", "s.history = list(history[: len(s.history)])",
           (f"{SS}::test_inv1_cache_equals_a_fresh_prefill_after_every_generate",)),
    Mutant("budget_evicts_most_recent_first", STORE,
           "for k, s in list(self._entries.items()):", "for k, s in reversed(list(self._entries.items())):",
           (f"{SS}::test_inv2_lru_eviction_by_bytes",)),
    Mutant("budget_never_evicts_sessions", STORE,
           "if s.busy or s.cache is None:", "if s.busy or s.cache is None or not s.anonymous:",
           (f"{SS}::test_inv2_lru_eviction_by_bytes",)),
    # -- edges (abort on disconnect, session busy, ...): append here ----------------------------
    Mutant("abort_never_queued", "inference_engine/engine/request_stream.py",
           "if not self._ended and self._abort is None:", "if False:",
           (f"{HTTP}::test_disconnect_mid_stream_aborts",)),
    Mutant("whole_request_ignores_disconnect", APP,
           "if await request.is_disconnected():", "if False and await request.is_disconnected():",
           (f"{ROB}::test_client_leaving_stops_its_work[decoding-whole]",)),
    Mutant("busy_session_not_refused", STORE,
           "            if s.busy:", "            if False:",
           (f"{ROB}::test_two_requests_on_one_session", f"{ISO}::test_grpc_sessions_are_per_key_and_append_during_generate_is_refused")),
    Mutant("check_in_leaves_session_busy", STORE,
           "            s.busy = False", "            s.busy = s.busy",
           (f"{ENG}::test_failed_step_checks_the_session_in_without_its_cache",)),
    Mutant("cancelled_admission_not_undone", AENG,
           "self._call(lambda: [self._abort(rid, notify=False) for rid in f.result()])", "None",
           (f"{ENG}::test_cancel_while_admission_is_queued_never_hurts_the_engine",)),
    Mutant("partial_admission_kept", AENG,
           "                for rid in admitted:\n                    self._abort(rid, notify=False)\n", "",
           (f"{ENG}::test_admission_of_several_choices_is_all_or_none",)),
    Mutant("burst_refused_below_capacity", "inference_engine/engine/scheduler.py",
           "if len(self.running) + len(self.waiting) >= self.max_running + self.max_waiting:",
           "if len(self.waiting) >= self.max_waiting:",
           ("tests/test_engine.py::test_a_burst_fills_the_running_slots_then_the_queue",)),
    Mutant("failing_step_kills_engine", AENG,
           "        except Exception as e:  # noqa: BLE001 - fails the requests of this step, not the engine",
           "        except ArithmeticError as e:",
           (f"{ENG}::test_failing_step_fails_only_its_requests",)),
    Mutant("failing_observer_kills_engine", AENG,
           "            except Exception:  # noqa: BLE001 - metrics must never stop decoding",
           "            except ArithmeticError:",
           (f"{ENG}::test_failing_observer_does_not_stop_decoding",)),
    Mutant("dead_engine_strands_streams", AENG,
           "                stream.put(self._dead())", "                pass",
           (f"{ENG}::test_dead_engine_ends_every_await_and_says_why",)),
    Mutant("draining_still_admits", APP,
           "        if self.draining:", "        if False:",
           (f"{ROB}::test_sigterm_drains_then_aborts_and_exits_zero",)),
    Mutant("abort_reported_as_stop", CORE,
           "        req.finish_reason = FinishReason.ABORT", "        req.finish_reason = FinishReason.STOP",
           (f"{ENG}::test_abort_all_reports_abort_and_frees_everything",)),
    Mutant("prefix_cache_shared_across_keys", STORE,
           "if s.anonymous and s.tenant == tenant:", "if s.anonymous:",
           (f"{ISO}::test_prefix_cache_and_suffix_index_are_per_key",)),
    Mutant("suffix_index_shared_across_keys", SPEC,
           "            return self.suffix_for(req.tenant)", '            return self.suffix_for("")',
           (f"{ISO}::test_prefix_cache_and_suffix_index_are_per_key",)),
    Mutant("prefix_entries_in_session_namespace", STORE,
           'self._entries[("p", tenant, n)] = Session(', 'self._entries[("s", tenant, f"prefix-{n}")] = Session(',
           (f"{ISO}::test_client_session_ids_never_touch_prefix_entries",)),
    Mutant("stop_string_drops_engine_usage", GEN,
           "                result = await stream.abort()", "                result = None",
           (f"{ISO}::test_stop_string_keeps_usage_and_speculative_stats",)),
    Mutant("capacity_checked_after_check_out", CORE,
           "        self.scheduler.check_capacity()  # Overloaded before any session is touched", "        pass",
           ("tests/test_sdk.py::test_capacity_errors",)),
    # -- the adaptive controller's decisions and the cost model --------------------------------
    Mutant("untested_positions_get_fixed_prior", ADAPT,
           "prior = (h + CHAIN_WEIGHT * prior) / (t + CHAIN_WEIGHT)", "prior = (h + CHAIN_WEIGHT * 0.5) / (t + CHAIN_WEIGHT)",
           (f"{AD}::test_untested_positions_inherit_the_last_tested_one",)),
    Mutant("untested_beyond_reject_counted_as_tested", ADAPT,
           "tested = min(drafted, accepted + 1)", "tested = drafted",
           (f"{AD}::test_a_reject_position_is_learned", f"{AD}::test_decisions_follow_a_change_of_regime")),
    Mutant("no_noise_margin", ADAPT,
           "best, best_value = 0, MARGIN / cost[0]", "best, best_value = 0, 1.0 / cost[0]",
           (f"{AD}::test_cost_curve_decides_the_break_even",)),
    Mutant("cost_ignored", ADAPT,
           "value = tokens / (cost[k] + draft_cost * k)", "value = tokens / (1.0 + draft_cost * k)",
           (f"{AD}::test_cost_curve_decides_the_break_even", f"{AD}::test_never_matching_drafts_choose_plain_without_probing")),
    Mutant("evidence_never_decays", ADAPT,
           "self._counts(request_id).add(drafted, accepted, DECAY)", "self._counts(request_id).add(drafted, accepted, 1.0)",
           (f"{AD}::test_decisions_follow_a_change_of_regime",)),
    Mutant("no_method_prior", ADAPT,
           "counts = self._requests[request_id] = Counts([PRIOR_WEIGHT * first], [PRIOR_WEIGHT])",
           "counts = self._requests[request_id] = Counts([PRIOR_WEIGHT * PRIOR], [PRIOR_WEIGHT])",
           (f"{AD}::test_method_prior_carries_across_requests_and_release_forgets",)),
    Mutant("shadow_not_recorded", SPEC,
           "if k < a and draft.tokens:", "if False:",
           (f"{PROP}::test_auto_notices_when_drafts_start_matching",)),
    Mutant("in_process_calibration_not_shared", "inference_engine/engine/calibration.py",
           'if config.calibration_file == "":', "if not config.calibration_file:",
           (f"{AD}::test_an_in_process_engine_shares_the_servers_calibration_cache",)),
    Mutant("cost_mean_not_median", COST,
           "self._median[key] = statistics.median(samples)", "self._median[key] = statistics.fmean(samples)",
           (f"{AD}::test_cost_model_median_ignores_outliers_and_corrects_the_seed",)),
    Mutant("cost_seed_not_scaled", COST,
           "curve.append(self.seed[k] * scale)", "curve.append(self.seed[k])",
           (f"{AD}::test_cost_model_median_ignores_outliers_and_corrects_the_seed",)),
    Mutant("cost_pinned_moves", COST,
           "if not self.online or k > self.max_k:", "if k > self.max_k:",
           (f"{AD}::test_cost_model_pinned_is_not_moved",)),
    # -- verify-width-aware weights and int4 fusion ------------------------------------------------
    Mutant("verify_width_without_margin", VW,
           "if verify[w] >= (1.0 - margin) * step[w]:", "if verify[w] >= step[w]:",
           ("tests/test_verify_weights.py::test_choose_width_on_pinned_timings",)),
    Mutant("fusion_never_reused", QUANT,
           "if done is not None and done[0] == key:", "if done is not None and done[0] != key:",
           ("tests/test_quantize.py::test_quantized_engine_equals_quantized_hf_reference",)),
    # -- structured output: the grammar under speculation ------------------------------------------
    Mutant("grammar_stop_keeps_bonus", "inference_engine/engine/grammar.py",
           "                return list(tokens[:n])", "                return list(tokens)",
           (f"{GRAMMAR_TEST}::test_greedy_speculation_under_a_grammar_equals_plain",)),
    Mutant("grammar_drafts_uncut", SPEC,
           "n = req.grammar.valid_prefix(draft.tokens)", "n = len(draft.tokens)",
           (f"{GRAMMAR_TEST}::test_greedy_speculation_under_a_grammar_equals_plain",)),
    Mutant("grammar_bonus_row_unmasked", "inference_engine/engine/grammar.py",
           "        for i in range(rows):", "        for i in range(rows - 1):",
           (f"{GRAMMAR_TEST}::test_greedy_speculation_under_a_grammar_equals_plain",)),
    Mutant("grammar_logprobs_keep_cut_bonus", CORE,
           "req.logprobs.extend(_logprobs(lg, tokens, req.sampling.logprobs))",
           "req.logprobs.extend(_logprobs(lg, out.tokens, req.sampling.logprobs))",
           (f"{GRAMMAR_TEST}::test_logprobs_under_a_grammar_match_the_tokens",)),
    Mutant("forced_tokens_not_drafted", SPEC,
           "if n == 0 and (cap := self._cap(req)):", "if n < 0 and (cap := self._cap(req)):",
           (f"{GRAMMAR_TEST}::test_forced_tokens_are_free_drafts",)),
    Mutant("named_tool_allows_many_calls", "inference_engine/http/tools.py",
           'if parallel and choice == "required" else ""', 'if parallel else ""',
           ("tests/test_tool_calls.py::test_named_function_is_called",)),
    Mutant("prompt_logprobs_shifted", CORE,
           "_logprobs(logits[: len(scored)], scored,", "_logprobs(logits[1 : len(scored) + 1], scored,",
           ("tests/test_openai_contract.py::test_completions_echo_logprobs_score_the_prompt",)),
    # -- the hostile-input table and the engine's range checks ------------------------------------
    Mutant("screen_depth_unbounded", SCREEN,
           "if depth >= MAX_DEPTH:", "if depth >= 100 * MAX_DEPTH:",
           (f"{HOSTILE}::test_hostile_body_is_400_naming_the_field[depth-0]",)),
    Mutant("screen_session_id_unchecked", SCREEN,
           "if value is not None and not SESSION_ID.fullmatch(value):", "if value is not None and not value:",
           (f"{HOSTILE}::test_bad_session_ids_are_400_and_create_nothing",)),
    Mutant("chunked_body_unbounded", "inference_engine/http/middleware.py",
           "if seen > self.limit:", "if False:",
           (f"{HOSTILE}::test_chunked_body_over_the_limit_is_413",)),
    Mutant("nan_temperature_admitted", "inference_engine/engine/validation.py",
           "if not 0.0 <= sp.temperature < math.inf:", "if sp.temperature < 0:",
           ("tests/test_engine.py::test_invalid_requests_name_the_field",)),
    # -- the CUDA-graph step (its static step and per-buffer capture, run on the CPU) --------------
    Mutant("graph_mask_hides_own_position", FAST,
           "mask = (torch.arange(keys[0].shape[2], device=ids.device) <= pos)[None]",
           "mask = (torch.arange(keys[0].shape[2], device=ids.device) < pos)[None]", (GRAPH_TEST,)),
    Mutant("graph_not_recaptured_on_growth", GRAPHS,
           "if g is None or g.keys is not cache.keys[0]:", "if g is None:", (GRAPH_TEST,)),
    Mutant("graph_position_not_updated", GRAPHS,
           "g.pos.fill_(start)", "g.pos.fill_(g.pos.item())", (GRAPH_TEST,)),
    # -- the cluster's session directory: one owner, busy everywhere, stale releases ignored -----------
    Mutant("busy_only_on_its_own_replica", DIRECTORY,
           "if e.busy and (e.owner == replica or self.alive(e.owner)):", "if e.busy and e.owner == replica:",
           (f"{DIR_TEST}::test_busy_on_a_live_replica_is_busy_everywhere",)),
    Mutant("dead_owner_keeps_its_lease", DIRECTORY,
           "return beat is not None and self.clock() - beat.at < self.lease_s", "return beat is not None",
           (f"{DIR_TEST}::test_busy_on_a_live_replica_is_busy_everywhere",)),
    Mutant("stale_release_recorded", DIRECTORY,
           "if e is None or e.owner != replica or e.epoch != epoch:", "if e is None:",
           (f"{DIR_TEST}::test_handoff_moves_ownership_and_brings_the_history",)),
    Mutant("handoff_keeps_the_epoch", DIRECTORY,
           "e.owner, e.epoch = replica, e.epoch + 1", "e.owner, e.epoch = replica, e.epoch",
           (f"{DIR_TEST}::test_handoff_moves_ownership_and_brings_the_history",)),
    Mutant("close_tag_in_a_json_string_ends_the_call", "inference_engine/http/parsers.py",
           'i = _close_tag(self.buf, close, self.mode == "tool")', "i = self.buf.find(close)",
           ("tests/test_output_parsing.py::test_close_tag_inside_a_json_string_is_text",)),
    Mutant("cut_call_as_markup", "inference_engine/http/parsers.py",
           "            self._cut_call(out, rest)", "            out.content += TOOL_OPEN + rest",
           ("tests/test_output_parsing.py::test_call_cut_by_the_length_limit",)),
    Mutant("stop_earliest_start_wins", "inference_engine/tokenizer.py",
           "hits = [(i + len(s), i, s) for s", "hits = [(i, i, s) for s",
           ("tests/test_tokenizer.py::test_stop_strings_against_brute_force",)),
    Mutant("cache_hint_busy_is_an_error", CORE,
           "if not sub.session_hint:", "if sub.session_hint is not None:",
           ("tests/test_http_sessions.py::test_prompt_cache_key_keeps_a_conversation_warm",)),
    # sink + window KV (cache/kv_cache.py): the window's edge, the ring's size, trim past evictions
    Mutant("window_sees_one_too_many", "inference_engine/cache/kv_cache.py",
           "(pos > query - self.window)", "(pos >= query - self.window)",
           ("tests/test_kv_window.py::test_plain_equals_the_windowed_model",)),
    Mutant("ring_without_room_for_drafts", "inference_engine/cache/kv_cache.py",
           "need = min(total, S + W + T - 1)", "need = min(total, S + W)",
           ("tests/test_kv_window.py::test_session_turns_hold_the_window_and_its_bytes",
            "tests/test_kv_window.py::test_batched_rows_keep_their_own_windows")),
    Mutant("trim_into_evicted_positions", "inference_engine/cache/kv_cache.py",
           "self.length - n - self.oldest < self.window.window - 1", "False",
           ("tests/test_kv_window.py::test_rewinding_into_evicted_positions_prefills_again",)),
    # the native CPU step (models/csrc/; each mutant rebuilds it, ~35 s): the tile layout, the block
    # formats' zero points and minimums, Q6_K's high bits, the KV write by position, the causal
    # length, the last key of a block of 16
    Mutant("native_high_nibble_misread", BLOCKS, "W[j + 4] = _mm512_and_si512(_mm512_srli_epi16(b, 4), nib);",
           "W[j + 4] = _mm512_and_si512(_mm512_srli_epi16(b, 3), nib);",
           (f"{NAT}::test_block_linear_matches_the_ggml_formula",)),
    Mutant("native_q4_1_minimum_dropped", BLOCKS,
           "if constexpr (BITS == 4 && !SYM) acc[i] = fma(mv, splat(xq.sx[at]), acc[i]);", "(void)0;",
           (f"{NAT}::test_block_linear_matches_the_ggml_formula",)),
    Mutant("native_q4_0_zero_point_dropped", BLOCKS, "BITS == 8 ? -128 : (SYM ? -8 : 0);", "BITS == 8 ? -128 : 0;",
           (f"{NAT}::test_block_linear_matches_the_ggml_formula",)),
    Mutant("native_q6_k_high_bits_misplaced", BLOCKS,
           "Wh[1] = _mm512_or_si512(Wh[1], _mm512_and_si512(_mm512_slli_epi16(hb, 2), top));",
           "Wh[1] = _mm512_or_si512(Wh[1], _mm512_and_si512(_mm512_slli_epi16(hb, 4), top));",
           (f"{NAT}::test_a_q6_k_head_computes_gguf_py_s_weights",)),
    Mutant("native_last_key_of_a_block_unscored", NATIVE, "std::min<int64_t>(16, L - j), D, scale, scores + j);",
           "std::min<int64_t>(15, L - j), D, scale, scores + j);",
           (f"{NAT}::test_decoder_matches_the_numpy_reference",)),
    Mutant("native_kv_written_at_the_first_position", NATIVE, "const int64_t p = (g * cap + start + t) * D;",
           "const int64_t p = (g * cap + start) * D;",
           (f"{NAT}::test_decoder_matches_the_numpy_reference", f"{NAT}::test_a_token_is_the_same_alone_verified_prefilled_or_batched")),
    Mutant("native_query_misses_its_own_key", NATIVE, "start + t + 1, D, scale,", "start + t, D, scale,",
           (f"{NAT}::test_decoder_matches_the_numpy_reference",)),
]


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, check=True, capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def check_fragments(root: Path, mutants: list[Mutant]) -> None:
    """Fail loudly when a fragment is not exactly once in its file: the code drifted."""
    bad = []
    for m in mutants:
        path = root / m.file
        n = path.read_text().count(m.original) if path.is_file() else 0
        if n != 1 or m.original == m.replacement:
            bad.append(f"  {m.name}: {m.original!r} found {n} times in {m.file} (expected exactly once)")
    if bad:
        sys.exit("mutant fragments drifted; update MUTANTS:\n" + "\n".join(bad))


def copy_tree(dst: Path) -> None:
    for f in tracked_files():
        target = dst / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, target)


def env_for(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(scratch), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               # a mutant and its restored original can have equal size and mtime second: never trust .pyc
               PYTHONDONTWRITEBYTECODE="1")
    return env


def check_imports(scratch: Path) -> None:
    code = "import inference_engine, kv_cache_proposer; print(inference_engine.__file__); print(kv_cache_proposer.__file__)"
    out = subprocess.run([str(PYTHON), "-c", code], cwd=scratch, env=env_for(scratch), check=True,
                         capture_output=True, text=True).stdout.split()
    if not all(Path(p).resolve().is_relative_to(scratch.resolve()) for p in out):
        sys.exit(f"the scratch copy is not what gets imported: {out}")


def run_tests(scratch: Path, tests: tuple[str, ...]) -> tuple[int, float, str]:
    t0 = time.monotonic()
    try:
        p = subprocess.run([str(PYTHON), "-m", "pytest", "-x", "-q", "--no-header", *tests], cwd=scratch,
                           env=env_for(scratch), capture_output=True, text=True, timeout=TIMEOUT_S)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        partial = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc, out = -1, f"timed out after {TIMEOUT_S}s\n{partial}"
    return rc, time.monotonic() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutants and their tests")
    ap.add_argument("--only", action="append", metavar="NAME", help="run only this mutant (repeatable)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy and print its path")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the test output of survivors and errors")
    args = ap.parse_args()

    names = [m.name for m in MUTANTS]
    assert len(set(names)) == len(names), "mutant names must be unique"
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:40s} {m.file}\n    {m.original!r}\n -> {m.replacement!r}\n    tests: {' '.join(m.tests)}")
        return 0
    chosen = MUTANTS
    if args.only:
        unknown = set(args.only) - set(names)
        if unknown:
            sys.exit(f"unknown mutant(s): {', '.join(sorted(unknown))}; see --list")
        chosen = [m for m in MUTANTS if m.name in args.only]
    scratch = Path(tempfile.mkdtemp(prefix="kakeya-mutants-"))
    try:
        copy_tree(scratch)
        check_fragments(scratch, chosen)  # on the copy: the tree may change under us while this runs
        check_imports(scratch)
        baseline = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        rc, secs, out = run_tests(scratch, baseline)
        print(f"baseline (unmutated, {len(baseline)} test ids): rc={rc} in {secs:.0f}s", flush=True)
        if rc != 0:
            print(out[-6000:])
            print("the unmutated tests must pass first", file=sys.stderr)
            return 2
        rows, survivors, errors = [], [], []
        for m in chosen:
            path = scratch / m.file
            original = path.read_text()
            path.write_text(original.replace(m.original, m.replacement, 1))
            try:
                rc, secs, out = run_tests(scratch, m.tests)
            finally:
                path.write_text(original)
            # pytest: 1 = tests failed, 2 = collection/import error; both mean the mutant was caught.
            # 4 (usage, e.g. an unknown node id) and 5 (nothing collected) mean the mutant's tests are wrong.
            if rc in (1, 2, -1):
                verdict = "killed" if rc != -1 else "killed (timeout)"
            elif rc == 0:
                verdict = "SURVIVED"
                survivors.append(m.name)
            else:
                verdict = f"ERROR rc={rc}"
                errors.append(m.name)
            rows.append((m.name, verdict, secs))
            print(f"{m.name:40s} {verdict:18s} {secs:6.1f}s", flush=True)
            if args.verbose and verdict not in ("killed", "killed (timeout)"):
                print(out[-4000:])
        total = sum(r[2] for r in rows)
        print(f"\n{'mutant':40s} {'result':18s} seconds")
        for name, verdict, secs in rows:
            print(f"{name:40s} {verdict:18s} {secs:7.1f}")
        print(f"{len(rows) - len(survivors) - len(errors)}/{len(rows)} killed; mutant runs {total:.0f}s")
        if survivors:
            print("survived: " + ", ".join(survivors), file=sys.stderr)
        if errors:
            print("errors: " + ", ".join(errors), file=sys.stderr)
        return 1 if survivors or errors else 0
    finally:
        if args.keep:
            print(f"scratch copy kept at {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
