"""Seeded physical/appearance simulators behind the synthetic sources: ``beads`` (bright-field/fluorescence
bead images) and ``mito`` (EM neuropil with mitochondria). Pure numpy/scipy, no torch."""
