"""A study unit's name, written once (`study_results.run_name`, `StudyPlan.run_name`)."""

from __future__ import annotations

from mcir_cli.compare.study_results import run_name
from mcir_cli.workflows.study import StudyPlan, parse_arm


def test_unit_names():
    assert run_name("mcir", 2) == "mcir-s2" and run_name("plain", 0) == "plain-s0"
    plan = StudyPlan(output="study", data=[], benchmarks=[])
    assert plan.run_name(parse_arm("mcir"), 1) == plan.run_name("mcir", 1) == "mcir-s1"
    assert plan.start_name(1) == "start"  # fine-tuning: one start row, the pretrained model
    scratch = StudyPlan(output="study", data=[], benchmarks=[], model="edsr-light-x4", from_scratch=True)
    assert scratch.start_name(1) == "start-s1"  # from scratch: each seed's initialisation
