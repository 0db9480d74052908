"""Progress bars for the loops, shown only where someone watches."""
from tqdm import tqdm


def progress(iterable, total: int, desc: str, shown: bool = True):
    """A progress bar on an interactive terminal; nothing in logs (tqdm's ``disable=None``)
    nor where ``shown`` is False (the ranks other than 0)."""
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                disable=None if shown else True)
