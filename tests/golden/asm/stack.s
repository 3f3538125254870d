# snuc assembly (docs/isa.md): @stack on pcm-256x256
# a timestep every 133 cycles (lower bound 133); latency 421 cycles, 4 pipeline stage(s)
program @stack {
  target "pcm-256x256" {
    rows = 256
    cols = 256
    cores = 64
    chips = 1
    devices_per_polarity = 1
    g_max_us = 25.0
    conductance_levels = 0
    dac_bits = 8
    adc_bits = 8
    input_phases = 1
    clock_ghz = 1.0
    mvm_cycles = 133
    energy_mvm_pj = 13400.0
    t0_s = 20.0
    t_read_ns = 250.0
    prog_noise_scale = 1.0
    read_noise_scale = 1.0
    drift_scale = 1.0
    digital_lanes = 32
    energy_digital_op_pj = 1.0
    noc_hop_cycles = 2
    noc_bytes_per_cycle = 32
    energy_noc_byte_pj = 1.0
    chip_link_cycles = 100
    energy_chip_link_byte_pj = 10.0
    neuron_snu_cycles = 1
    neuron_snu_energy_pj = 3.5
    neuron_lif_sub_cycles = 1
    neuron_lif_sub_energy_pj = 2.5
    neuron_if_cycles = 1
    neuron_if_energy_pj = 2.0
    neuron_cuba_cycles = 1
    neuron_cuba_energy_pj = 4.0
    neuron_li_cycles = 1
    neuron_li_energy_pj = 1.0
  }
  timing {ii = 133, latency = 421, lower_bound = 133}
  tile 0 @W0 {layer = "a0", rows = [0, 16], cols = [0, 24], crossbar = 0, xbar_row = 0, xbar_col = 0, dac = [0.0, 1.0], adc_range = 1.0}
  tile 1 @W1 {layer = "a1", rows = [0, 24], cols = [0, 24], crossbar = 1, xbar_row = 0, xbar_col = 0, dac = [0.0, 1.0], adc_range = 1.0}
  tile 2 @W2 {layer = "a2", rows = [0, 24], cols = [0, 8], crossbar = 2, xbar_row = 0, xbar_col = 0, dac = [0.0, 1.0], adc_range = 1.0}
  gdu 0 {
    input %x : f32[B, 16]
    buf %y2_new : f32[B, 8]
      0: send %x -> core 0 {bytes = 16}  # 3 cycles, 16.0 pJ
    133: sync
    266: sync
    399: sync
    421: recv %y2_new <- core 2
    532: sync
    output %y2_new
  }
  core 0 {
    const @decay : f32[]
    const @b0 : f32[24]
    state %s0 : f32[B, 24] = %s0_new
    state %y0 : f32[B, 24] = %y0_new
    buf %x : f32[B, 16]
    buf $a0_t : i32[B, 24] copies 2
    buf %a0_t : f32[B, 24]
    buf %s0_new : f32[B, 24] copies 2
    buf %y0_new : f32[B, 24] copies 2
      3: recv %x <- gdu 0
      3: mvm $a0_t = %x {tile = 0, rows = 16, phases = 1, vectors = 1}  # 133 cycles, 837.5 pJ
    133: sync
    136: adc %a0_t = $a0_t {tile = 0, n = 24}  # 1 cycle, 24.0 pJ
    137: snu %s0_new, %y0_new = %a0_t, %s0, %y0, @decay, @b0 {g = "relu", h = "step", n = 24, ops = 7}  # 1 cycle, 84.0 pJ
    138: send %y0_new -> core 1 {bytes = 3}  # 3 cycles, 3.0 pJ
    266: sync
    399: sync
    532: sync
  }
  core 1 {
    const @decay : f32[]
    const @b1 : f32[24]
    state %s1 : f32[B, 24] = %s1_new
    state %y1 : f32[B, 24] = %y1_new
    buf %y0_new : f32[B, 24]
    buf $a1_t : i32[B, 24] copies 2
    buf %a1_t : f32[B, 24]
    buf %s1_new : f32[B, 24] copies 2
    buf %y1_new : f32[B, 24] copies 2
    133: sync
    141: recv %y0_new <- core 0
    141: mvm $a1_t = %y0_new {tile = 1, rows = 24, phases = 1, vectors = 1}  # 133 cycles, 1256.2 pJ
    266: sync
    274: adc %a1_t = $a1_t {tile = 1, n = 24}  # 1 cycle, 24.0 pJ
    275: snu %s1_new, %y1_new = %a1_t, %s1, %y1, @decay, @b1 {g = "relu", h = "step", n = 24, ops = 7}  # 1 cycle, 84.0 pJ
    276: send %y1_new -> core 2 {bytes = 3}  # 3 cycles, 3.0 pJ
    399: sync
    532: sync
  }
  core 2 {
    const @decay : f32[]
    const @b2 : f32[8]
    state %s2 : f32[B, 8] = %s2_new
    state %y2 : f32[B, 8] = %y2_new
    buf %y1_new : f32[B, 24]
    buf $a2_t : i32[B, 8] copies 2
    buf %a2_t : f32[B, 8]
    buf %s2_new : f32[B, 8] copies 2
    buf %y2_new : f32[B, 8] copies 2
    133: sync
    266: sync
    279: recv %y1_new <- core 1
    279: mvm $a2_t = %y1_new {tile = 2, rows = 24, phases = 1, vectors = 1}  # 133 cycles, 1256.2 pJ
    399: sync
    412: adc %a2_t = $a2_t {tile = 2, n = 8}  # 1 cycle, 8.0 pJ
    413: snu %s2_new, %y2_new = %a2_t, %s2, %y2, @decay, @b2 {g = "relu", h = "step", n = 8, ops = 7}  # 1 cycle, 28.0 pJ
    414: send %y2_new -> gdu 0 {bytes = 1}  # 7 cycles, 3.0 pJ
    532: sync
  }
}
