"""Closed-loop evaluation of policies in gymnasium tasks: success rates with confidence intervals, videos, plots."""
