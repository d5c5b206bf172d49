"""Pure evolutionary operators: (rng key, candidates, space, settings) -> new candidates.

Every produced candidate is legal by construction (`SearchSpace.is_valid`); property tests check it. Randomness
comes only from the JAX PRNG key passed in (turned into a numpy Generator), so a generation is a pure function of
(key, population) and a resumed search reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import jax
import numpy as np

from longrope_jax.search.space import Candidate, SearchSpace


def numpy_rng(key: jax.Array) -> np.random.Generator:
    """A numpy Generator determined by a JAX key (host-side operators, explicit RNG)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint64).tolist())


def _grid_between(rng: np.random.Generator, low: float, high: float, grid: float) -> float:
    """Uniform on the grid points within [low, high]."""
    lo, hi = int(np.ceil(low / grid - 1e-9)), int(np.floor(high / grid + 1e-9))
    return (lo if hi <= lo else int(rng.integers(lo, hi + 1))) * grid


def _mutate_n_hat(rng: np.random.Generator, n_hat: int, space: SearchSpace, p: float) -> int:
    choices = space.n_hat_choices
    if len(choices) == 1 or rng.random() >= p:
        return n_hat
    index = choices.index(n_hat) + int(rng.choice([-1, 1]))
    return choices[int(np.clip(index, 0, len(choices) - 1))]


def mutate(key: jax.Array, parent: Candidate, space: SearchSpace, p: float = 0.3) -> Candidate:
    """Each free factor, with probability p, is resampled on the grid between its neighbours (monotone kept);
    in the unordered `dim` space, anywhere in [lower, upper]; longrope2's critical dimension, with probability p,
    moves one pair within its range."""
    rng = numpy_rng(key)
    lam = parent.array.copy()
    n_hat = _mutate_n_hat(rng, parent.n_hat, space, p)
    if space.kind == "dim":
        for i in range(space.half_dim):
            if rng.random() < p:
                lam[i] = _grid_between(rng, space.lower, space.upper, space.grid)
        return space.project(lam, n_hat)
    if space.kind == "dim_mono":
        for i in range(space.half_dim):
            if rng.random() < p:
                low = lam[i - 1] if i > 0 else space.lower
                high = lam[i + 1] if i + 1 < space.half_dim else space.upper
                lam[i] = _grid_between(rng, low, high, space.grid)
        return space.project(lam, n_hat)
    if space.kind == "dim_piece_mono":
        alpha, beta = parent.alpha, parent.beta
        if rng.random() < p:
            alpha = int(np.clip(alpha + rng.choice([-1, 1]), -1, beta - 1))
        if rng.random() < p:
            beta = int(np.clip(beta + rng.choice([-1, 1]), alpha + 1, space.half_dim - 1))
        s = float(space.quantize(space.scale))
        lam[:alpha + 1], lam[beta + 1:] = 1.0, s
        for i in range(alpha + 1, beta + 1):
            if rng.random() < p:
                lam[i] = _grid_between(rng, lam[i - 1] if i > 0 else 1.0, lam[i + 1] if i + 1 < space.half_dim
                                       else s, space.grid)
        lam = np.maximum.accumulate(np.clip(lam, 1.0, s))
        return Candidate(tuple(space.quantize(lam)), n_hat, alpha, beta)
    cd, (cd_low, cd_high) = parent.critical_dim, space.critical_range
    if cd_low < cd_high and rng.random() < p:  # cd moves one pair; the factors at its new place get repaired
        cd = int(np.clip(cd + rng.choice([-1, 1]), cd_low, cd_high))
    upper = lam[cd:].copy()
    for i in range(len(upper)):
        if rng.random() < p:
            low = upper[i - 1] + space.grid if i > 0 else space.scale
            high = upper[i + 1] - space.grid if i + 1 < len(upper) else min(space.upper, upper[i - 1] + 4.0)
            upper[i] = _grid_between(rng, low, max(low, high), space.grid)
    return space.longrope2_candidate(upper, n_hat, cd)


def crossover(key: jax.Array, first: Candidate, second: Candidate, space: SearchSpace) -> Candidate:
    """Child of `first` taking `second`'s value per dimension with probability 1/2, then repaired to legality."""
    rng = numpy_rng(key)
    take = rng.random(space.half_dim) < 0.5
    lam = np.where(take, second.array, first.array)
    n_hat = second.n_hat if rng.random() < 0.5 else first.n_hat
    if space.kind in ("dim", "dim_mono"):
        return space.project(lam, n_hat)
    if space.kind == "dim_piece_mono":
        alpha = second.alpha if rng.random() < 0.5 else first.alpha
        beta = second.beta if rng.random() < 0.5 else first.beta
        alpha, beta = min(alpha, beta - 1), max(beta, alpha + 1)
        s = float(space.quantize(space.scale))
        lam[:alpha + 1], lam[beta + 1:] = 1.0, s
        lam = np.maximum.accumulate(np.clip(lam, 1.0, s))
        return Candidate(tuple(space.quantize(lam)), n_hat, alpha, beta)
    cd_low, cd_high = space.critical_range
    cd = second.critical_dim if cd_low < cd_high and rng.random() < 0.5 else first.critical_dim
    return space.longrope2_candidate(lam[cd:], n_hat, cd)


def unique_new(candidates: Iterable[Candidate], space: SearchSpace, seen: set[str]) -> list[Candidate]:
    """Candidates whose grid key is not in `seen` (which is updated), in order."""
    out = []
    for candidate in candidates:
        key = space.key(candidate)
        if key not in seen:
            seen.add(key)
            out.append(candidate)
    return out


def initial_population(key: jax.Array, seeds: Sequence[np.ndarray], space: SearchSpace, size: int,
                       p: float = 0.3, max_tries: int = 50) -> list[Candidate]:
    """Seeds (PI, NTK, YaRN, …) projected into the space, then mutations of them until `size` unique candidates."""
    seen: set[str] = set()
    population = unique_new([space.project(s, n) for s in seeds for n in space.n_hat_choices[:1]], space, seen)
    parents = list(population)
    tries = 0
    while len(population) < size and tries < max_tries * size:
        key, sub = jax.random.split(key)
        parent = parents[tries % len(parents)]
        population += unique_new([mutate(sub, parent, space, p)], space, seen)
        tries += 1
    return population[:size]


def next_candidates(key: jax.Array, ranked: Sequence[Candidate], space: SearchSpace, seen: set[str],
                    num_parents: int = 32, num_mutants: int = 16, num_crossovers: int = 16, p: float = 0.3,
                    max_tries: int = 20) -> list[Candidate]:
    """One generation's new candidates: mutants and crossovers of the best `num_parents` (ranked best first),
    never repeating a candidate in `seen` (every candidate ever evaluated)."""
    parents = list(ranked[:num_parents])
    rng = numpy_rng(key)
    out: list[Candidate] = []
    for count, make in ((num_mutants, "mutate"), (num_crossovers, "crossover")):
        made, tries = 0, 0
        while made < count and tries < max_tries * max(count, 1):
            tries += 1
            sub = jax.random.fold_in(key, len(out) * 1000 + tries + (0 if make == "mutate" else 10**6))
            if make == "mutate" or len(parents) < 2:
                child = mutate(sub, parents[int(rng.integers(len(parents)))], space, p)
            else:
                i, j = rng.choice(len(parents), size=2, replace=False)
                child = crossover(sub, parents[int(i)], parents[int(j)], space)
            fresh = unique_new([child], space, seen)
            out += fresh
            made += len(fresh)
    return out
