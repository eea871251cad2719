"""Learners, rollout storage, run directories and evaluation."""
