"""Limits of a component argument, declared once on its Args field (see inference/field_limits.py).

The owner is `inference/field_limits.py`, which the inference image ships: the serving settings
(inference/settings.py) carry the same limits on the server's command line, torch- and Pulumi-free. This
module is the components' name for it.
"""

from inferforge.inference.field_limits import LIMITS, ArgsOutOfLimits, Limits, check_limits, limited, limits_of

__all__ = ["LIMITS", "ArgsOutOfLimits", "Limits", "check_limits", "limited", "limits_of"]
