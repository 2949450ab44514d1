"""Callbacks that drive a ``compress.LotterySearch`` from other training frameworks.

Nothing heavy is imported here: pick the module of the framework you use.

    from compress.integrations.lightning import LotteryTicketCallback     # lightning.pytorch.Trainer
    from compress.integrations.transformers import LotteryTicketCallback  # transformers.Trainer

Both need the optional extra: ``pip install 'compress[integrations]'``. ``TicketBatches``
(``compress.integrations.data``) replays the toolkit's own batch order level by level, so a
framework's fit finds bit for bit the masks ``find_ticket.py`` finds for the same recipe.
"""

from __future__ import annotations

__all__: list[str] = []
