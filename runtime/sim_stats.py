"""What a simulator run measured (SPEC §7): cycles, energy by component, spikes by layer.

:class:`SimStats` is the result of ``SimPlan.run_with_stats`` (and ``SimPlan.last_stats``,
``Artefact.last_stats``), made by :func:`run_stats` from what the run counted;
:func:`format_stats` prints it as ``snuc run --backend sim`` shows it on stderr.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from snuc.backends.isa import Program
from snuc.backends.timing import Timing

if TYPE_CHECKING:  # the plan's layout; only its type is named here
    from snuc.runtime.simulator import _Layout

__all__ = ["COMPONENTS", "EnergyRow", "LayerSpikes", "SimStats", "format_stats", "run_stats"]

COMPONENTS: Mapping[str, str] = {
    "crossbar": "crossbar MVM",
    "adc": "ADC read-out",
    "ldu": "LDU ops",
    "gdu": "GDU ops",
    "noc": "NoC",
    "chip_link": "chip links",
}
"""Where energy goes, by key, with the label of the table. ``crossbar`` is the MVMs (ADC
conversion included, as in the target's ``energy_mvm_pj``); ``adc`` the digital read-out
of the codes (scale and compensation)."""

_ACCESSES = {
    "crossbar": "MVM phases",
    "adc": "elements",
    "ldu": "element ops",
    "gdu": "element ops",
    "noc": "byte-hops",
    "chip_link": "bytes",
}


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class EnergyRow:
    """One component of the energy table.

    Attributes:
        component: a key of :data:`COMPONENTS`.
        accesses: what it did (MVM phases, elements read out, element operations, bytes
            times links crossed, bytes over chip links) over the whole run.
        energy_pj: its energy over the whole run.
    """

    component: str
    accesses: int
    energy_pj: float


@dataclass(frozen=True)
class LayerSpikes:
    """The spikes of one spiking layer over a run.

    Attributes:
        value: the IR value of the spikes (an SNU update's ``y`` or a step's result).
        neurons: its elements per sequence and timestep.
        spikes: spikes over all timesteps and sequences of the run.
        slots: neuron-timesteps of the run (``neurons * T * B``).
    """

    value: str
    neurons: int
    spikes: int
    slots: int

    @property
    def rate(self) -> float:
        """Spikes per neuron and timestep."""
        return self.spikes / self.slots if self.slots else 0.0


@dataclass(frozen=True)
class SimStats:
    """What a simulator run measured (SPEC §7: measured cycles, spikes, energy).

    Attributes:
        program: the program's name.
        target: the target's name.
        clock_ghz: the target's clock.
        timesteps: T, the length of the sequences.
        sequences: B, sequences run.
        cycles_per_timestep: measured cycles between consecutive timesteps' completions
            in steady state.
        latency_cycles: measured cycles from a timestep's start to its completion.
        total_cycles: the whole run: ``B * T`` timesteps streamed back to back (with
            duplicated tiles, each sequence but the last padded to whole turns of K).
        rows_driven: crossbar rows driven with a non-zero input, over the run.
        rows_available: rows the MVMs could have driven (every row of every tile).
        energy: the energy table, one row per component of :data:`COMPONENTS`.
        spikes: spikes per spiking layer.
    """

    program: str
    target: str
    clock_ghz: float
    timesteps: int
    sequences: int
    cycles_per_timestep: int
    latency_cycles: int
    total_cycles: int
    rows_driven: int
    rows_available: int
    energy: tuple[EnergyRow, ...]
    spikes: tuple[LayerSpikes, ...]

    @property
    def time_s(self) -> float:
        """The run's time at the target's clock."""
        return self.total_cycles / (self.clock_ghz * 1e9)

    @property
    def energy_pj(self) -> float:
        return sum(row.energy_pj for row in self.energy)

    @property
    def energy_pj_per_timestep(self) -> float:
        """Energy of one timestep of one sequence, averaged over the run."""
        steps = self.timesteps * self.sequences
        return self.energy_pj / steps if steps else 0.0

    @property
    def energy_pj_per_inference(self) -> float:
        """Energy of one sequence (all its timesteps), averaged over the run."""
        return self.energy_pj / self.sequences if self.sequences else 0.0

    @property
    def row_activity(self) -> float:
        """The fraction of crossbar rows driven."""
        return self.rows_driven / self.rows_available if self.rows_available else 0.0

    def component_energy_pj(self, component: str) -> float:
        return next(row.energy_pj for row in self.energy if row.component == component)

    def to_dict(self) -> dict[str, Any]:
        """The statistics as JSON-ready data."""
        total = self.energy_pj
        return {
            "program": self.program,
            "target": self.target,
            "timesteps": self.timesteps,
            "sequences": self.sequences,
            "cycles_per_timestep": self.cycles_per_timestep,
            "latency_cycles": self.latency_cycles,
            "total_cycles": self.total_cycles,
            "time_s": self.time_s,
            "energy_pj": total,
            "energy_pj_per_timestep": self.energy_pj_per_timestep,
            "energy_pj_per_inference": self.energy_pj_per_inference,
            "row_activity": self.row_activity,
            "energy": [
                {
                    "component": row.component,
                    "accesses": row.accesses,
                    "energy_pj": row.energy_pj,
                    "share": row.energy_pj / total if total else 0.0,
                }
                for row in self.energy
            ],
            "spikes": [
                {"value": s.value, "neurons": s.neurons, "spikes": s.spikes, "rate": s.rate}
                for s in self.spikes
            ],
        }


def run_stats(
    layout: _Layout, program: Program, timing: Timing, steps: int, sequences: int, tally: list[int]
) -> SimStats:
    """A run's statistics from the plan's layout and the run's tally (driven rows and
    spikes) of ``sequences`` sequences of ``steps`` timesteps of ``program``."""
    runs = steps * sequences
    energy = {c: [a * runs, e * runs] for c, (a, e) in layout.static.items()}
    energy["crossbar"][0] = layout.mvm_phases * runs
    rows_available = layout.mvm_rows * runs
    for j, (static, phases, mvm_rows) in layout.tagged.items():
        served = sequences * len(range(j, steps, layout.duplicate))
        for c, (a, e) in static.items():
            energy[c][0] += a * served
            energy[c][1] += e * served
        energy["crossbar"][0] += phases * served
        rows_available += mvm_rows * served
    spikes = []
    rows = 0
    for (kind, what), counted in zip(layout.tallies, tally, strict=True):
        count = int(counted)
        if kind == "rows":
            energy["crossbar"][1] += count * what
            rows += count
        else:
            value, neurons = what
            spikes.append(LayerSpikes(value, neurons, count, neurons * runs))
    return SimStats(
        program=program.name,
        target=program.target.name,
        clock_ghz=program.target.clock_ghz,
        timesteps=steps,
        sequences=sequences,
        cycles_per_timestep=timing.cycles_per_timestep,
        latency_cycles=timing.latency_cycles,
        total_cycles=timing.total_cycles(steps, sequences),
        rows_driven=rows,
        rows_available=rows_available,
        energy=tuple(EnergyRow(c, int(a), float(e)) for c, (a, e) in energy.items()),
        spikes=tuple(spikes),
    )


def format_stats(stats: SimStats) -> str:
    """The statistics as text tables (``snuc run --backend sim`` prints them to stderr)."""
    ns = stats.cycles_per_timestep / stats.clock_ghz
    lines = [
        f"simulated @{stats.program} on {stats.target}: {stats.sequences} sequence(s) x "
        f"{stats.timesteps} timestep(s)",
        f"  cycles per timestep  {stats.cycles_per_timestep} (measured; {ns:g} ns)",
        f"  latency              {stats.latency_cycles} cycles",
        f"  total                {stats.total_cycles} cycles, {stats.time_s * 1e6:.3f} us",
        f"  energy               {stats.energy_pj_per_timestep:.1f} pJ per timestep, "
        f"{stats.energy_pj_per_inference:.1f} pJ per sequence",
        f"  crossbar rows driven {stats.row_activity:.1%}",
        "",
    ]
    total = stats.energy_pj
    table = [
        (
            COMPONENTS[row.component],
            f"{row.accesses:,} {_ACCESSES[row.component]}",
            f"{row.energy_pj:,.1f}",
            f"{row.energy_pj / total:.1%}" if total else "-",
        )
        for row in stats.energy
    ]
    table.append(("total", "", f"{total:,.1f}", "100.0%" if total else "-"))
    lines += _table(("component", "accesses", "energy pJ", "share"), table)
    if stats.spikes:
        lines.append("")
        rows = [(s.value, f"{s.neurons:,}", f"{s.spikes:,}", f"{s.rate:.4f}") for s in stats.spikes]
        lines += _table(("spiking layer", "neurons", "spikes", "rate"), rows)
    return "\n".join(lines) + "\n"


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  " + "  ".join([first, *rest]).rstrip()

    return [line(head), "  " + "  ".join("-" * w for w in widths), *map(line, rows)]
