# snuc assembly (docs/isa.md): @split_rnn on pcm-256x256
# a timestep every 158 cycles (lower bound 158); latency 318 cycles, 3 pipeline stage(s)
program @split_rnn {
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
  timing {ii = 158, latency = 318, lower_bound = 158}
  tile 0 @W {layer = "a", rows = [0, 32], cols = [0, 100], crossbar = 0, xbar_row = 0, xbar_col = 0, dac = [0.0, 1.0], adc_range = 1.0}
  tile 1 @H {layer = "r", rows = [0, 50], cols = [0, 100], crossbar = 1, xbar_row = 0, xbar_col = 0, dac = [0.0, 1.0], adc_range = 1.0}
  tile 2 @H {layer = "r", rows = [50, 100], cols = [0, 100], crossbar = 2, xbar_row = 0, xbar_col = 0, dac = [0.0, 1.0], adc_range = 1.0}
  gdu 0 {
    input %x : f32[B, 32]
    buf %y_new : f32[B, 100]
      0: send %x -> core 0 {bytes = 32}  # 3 cycles, 32.0 pJ
    158: sync
    316: sync
    318: recv %y_new <- core 1
    474: sync
    output %y_new
  }
  core 0 {
    buf %x : f32[B, 32]
    buf $a_t : i32[B, 100]
      3: recv %x <- gdu 0
      3: mvm $a_t = %x {tile = 0, rows = 32, phases = 1, vectors = 1}  # 133 cycles, 1675.0 pJ
    136: send $a_t -> core 1 {bytes = 100}  # 6 cycles, 100.0 pJ
    158: sync
    316: sync
    474: sync
  }
  core 1 {
    const @decay : f32[]
    const @bias : f32[]
    state %y : f32[B, 100] = %y_new
    state %s : f32[B, 100] = %s_new
    buf $a_t : i32[B, 100]
    buf %a_t : f32[B, 100]
    buf $r_t : i32[B, 100]
    buf %r_t : f32[B, 100]
    buf $r_t_1 : i32[B, 100]
    buf %r_t_1 : f32[B, 100]
    buf %r : f32[B, 100]
    buf %total : f32[B, 100]
    buf %s_new : f32[B, 100] copies 2
    buf %y_new : f32[B, 100] copies 2
    142: recv $a_t <- core 0
    155: adc %a_t = $a_t {tile = 0, n = 100}  # 4 cycles, 100.0 pJ
    158: sync
    158: mvm $r_t = %y {tile = 1, rows = 50, phases = 1, vectors = 1}  # 133 cycles, 2617.2 pJ
    291: adc %r_t = $r_t {tile = 1, n = 100}  # 4 cycles, 100.0 pJ
    297: recv $r_t_1 <- core 2
    297: adc %r_t_1 = $r_t_1 {tile = 2, n = 100}  # 4 cycles, 100.0 pJ
    301: acc %r = %r_t, %r_t_1 {n = 100, ops = 1}  # 4 cycles, 100.0 pJ
    305: acc %total = %a_t, %r {n = 100, ops = 1}  # 4 cycles, 100.0 pJ
    309: snu %s_new, %y_new = %total, %s, %y, @decay, @bias {g = "relu", h = "step", n = 100, ops = 7}  # 4 cycles, 350.0 pJ
    313: send %y_new -> core 2 {bytes = 7, window = [50, 100]}  # 3 cycles, 7.0 pJ
    313: send %y_new -> gdu 0 {bytes = 13}  # 5 cycles, 26.0 pJ
    316: sync
    474: sync
  }
  core 2 {
    state %y : f32[B, 100] = %y_new
    buf $r_t_1 : i32[B, 100]
    buf %y_new : f32[B, 100]
    158: sync
    158: mvm $r_t_1 = %y {tile = 2, rows = 50, phases = 1, vectors = 1}  # 133 cycles, 2617.2 pJ
    291: send $r_t_1 -> core 1 {bytes = 100}  # 6 cycles, 100.0 pJ
    316: sync
    316: recv %y_new <- core 1
    474: sync
  }
}
