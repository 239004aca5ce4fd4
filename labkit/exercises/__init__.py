"""Exercises: the checks behind the notebooks' "Your turn" cells, and the student build.

Each check takes the student's code (and the notebook's data) and returns a :class:`Verdict`:
``✓ ...`` when it matches labkit's reference, ``not yet: ...`` with what is wrong otherwise.
A check never raises, so a notebook with unsolved exercises still runs to the end.
"""

from .basics import check_count_params, check_lr_choice, check_network, check_trained
from .fixed_point import check_fixed_point
from .flops import REPORT_TABLE, check_layer_counts
from .graphs import check_changed_nodes, check_opcode_counts
from .search import check_pareto
from .student import student_notebook, student_source, write_student_build
from .verdict import FAIL_MARK, PASS_MARK, Verdict

__all__ = ["Verdict", "PASS_MARK", "FAIL_MARK", "check_count_params", "check_lr_choice", "check_network",
           "check_trained", "check_fixed_point", "check_opcode_counts", "check_changed_nodes",
           "check_layer_counts", "REPORT_TABLE", "check_pareto", "student_notebook", "student_source", "write_student_build"]
