"""Bench files for the runner's tests (built as dicts, validated like a YAML file)."""

from __future__ import annotations


def four_link_bench(
    lengths: tuple[float, ...] = (8.0, 8.0, 8.0, 3.0),
    excess_noise: tuple[float, ...] = (0.005, 0.1, 0.1, 0.005),
) -> dict:
    """Links a-d on a 1x4 switch. Links b and c are noisy (no positive finite-size key,
    so no distillation: keeps the test fast); a and d make keys."""
    names = ["a", "b", "c", "d"]
    instruments = {
        "tx": {"role": "transmitter", "resource": "TCPIP0::qkdsim-tx::inst0::INSTR"},
        "sw": {"role": "switch", "resource": "TCPIP0::qkdsim-switch::inst0::INSTR"},
        "otdr": {"role": "otdr", "resource": "TCPIP0::qkdsim-otdr::inst0::INSTR"},
    }
    links, emu_links = [], []
    for k, (name, length, xi) in enumerate(zip(names, lengths, excess_noise, strict=True), 1):
        instruments[f"rx{k}"] = {
            "role": "receiver",
            "resource": f"TCPIP0::qkdsim-rx{k}::inst0::INSTR",
        }
        instruments[f"pm{k}"] = {
            "role": "powermeter",
            "resource": f"TCPIP0::qkdsim-pm{k}::inst0::INSTR",
        }
        links.append(
            {
                "name": name,
                "switch_port": k,
                "receiver": f"rx{k}",
                "powermeter": f"pm{k}",
                "channel": 34,
                "length_km": length,
            }
        )
        emu_links.append(
            {
                "name": name,
                "fibre": {"length_km": length},
                "excess_noise": xi,
                "events": [{"kind": "connector", "position_km": 0.0, "loss_db": 0.25}],
                "receiver": {},
                "powermeter": {},
            }
        )
    return {
        "name": "four-links",
        "backend": "emulator",
        "seed": 11,
        "instruments": instruments,
        "links": links,
        # blocks of 2 x 2e5 symbols and eps 1e-6: a positive finite-size key at 3 km with
        # beta 0.85 (expected ~0.1 bit/symbol), marginal at 8 km; small frames keep it fast
        # (beta 0.85: the 1e5-bit codes' operating point, below the 1e6-bit default)
        "run": {
            "frames": 3,
            "symbols_per_frame": 200_000,
            "block_frames": 2,
            "epsilon": 1.0e-6,
            "ldpc_block_bits": 100_000,  # shorter codes for blocks of 4e5 symbols
            "beta": 0.85,
            "distill_workers": 0,  # inline: no worker processes to start in a test
        },
        "monitoring": {
            "otdr_every_frames": 1,
            "otdr": {"pulse_width_ns": 100, "range_km": 12, "averaging_s": 5},
        },
        "kms": {"mode": "lab"},
        "emulator": {
            "transmitter": {"channel": 34, "sync": {"channel": 40}},
            "switch": {"kind": "scpi", "ports": 4, "insertion_loss_db": 0.8},
            "otdr": {},
            "links": emu_links,
        },
    }
