"""The trainer: one process per GPU serving many devices' adaptation streams (see ``hub``)."""
