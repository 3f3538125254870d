# snuc assembly (docs/isa.md): @snu_sequence on pcm-256x256
# a timestep every 532 cycles (lower bound 532); latency 2294 cycles, 5 pipeline stage(s)
program @snu_sequence {
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
  }
  timing {ii = 532, latency = 2294, lower_bound = 532}
  tile 0 @layers.0.weight {layer = "linear", rows = [0, 32], cols = [0, 48], crossbar = 0, xbar_row = 0, xbar_col = 48, dac = [-1.0, 1.0], adc_range = 507.657383216896}
  tile 1 @layers.1.recurrent_weight {layer = "linear_2", rows = [0, 24], cols = [0, 24], crossbar = 0, xbar_row = 0, xbar_col = 144, dac = [0.0, 1.0], adc_range = 360.20720227429024}
  tile 2 @layers.1.weight {layer = "linear_1", rows = [0, 48], cols = [0, 24], crossbar = 0, xbar_row = 0, xbar_col = 0, dac = [0.0, 1.0], adc_range = 667.7046802305149}
  tile 3 @layers.2.linear.weight {layer = "linear_3_mm", rows = [0, 24], cols = [0, 10], crossbar = 0, xbar_row = 0, xbar_col = 192, dac = [0.0, 1.0], adc_range = 343.4680127991094}
  gdu 0 {
    input %X : f32[B, 32]
    buf %Y : f32[B, 10]
       0: send %X -> core 0 {bytes = 32}  # 3 cycles, 32.0 pJ
     532: sync
    1064: sync
    1596: sync
    2128: sync
    2294: recv %Y <- core 0
    2660: sync
    output %Y
  }
  core 0 {
    const @layers.0.decay : f32[]
    const @layers.0.bias : f32[48]
    const @layers.1.decay : f32[]
    const @layers.1.bias : f32[24]
    const @layers.2.linear.bias : f32[10]
    state %layers.0.s : f32[B, 48] = %layers.0.s_next
    state %layers.0.y : f32[B, 48] = %layers.0.y_next
    state %layers.1.y : f32[B, 24] = %layers.1.y_next
    state %layers.1.s : f32[B, 24] = %layers.1.s_next
    buf %X : f32[B, 32]
    buf $linear : i32[B, 48] copies 2
    buf %linear : f32[B, 48]
    buf %layers.0.s_next : f32[B, 48] copies 2
    buf %layers.0.y_next : f32[B, 48] copies 2
    buf $linear_1 : i32[B, 24]
    buf %linear_1 : f32[B, 24]
    buf $linear_2 : i32[B, 24]
    buf %linear_2 : f32[B, 24]
    buf %add_35 : f32[B, 24]
    buf %layers.1.s_next : f32[B, 24] copies 2
    buf %layers.1.y_next : f32[B, 24] copies 2
    buf $linear_3_mm : i32[B, 10]
    buf %linear_3_mm : f32[B, 10]
    buf %linear_3 : f32[B, 10]
    buf %Y : f32[B, 10]
       3: recv %X <- gdu 0
     133: mvm $linear = %X {tile = 0, rows = 32, phases = 1, vectors = 1}  # 133 cycles, 1675.0 pJ
     532: sync
     674: adc %linear = $linear {tile = 0, n = 48}  # 2 cycles, 48.0 pJ
     676: snu %layers.0.s_next, %layers.0.y_next = %linear, %layers.0.s, %layers.0.y, @layers.0.decay, @layers.0.bias {g = "relu", h = "step", n = 48, ops = 7}  # 14 cycles, 336.0 pJ
     798: mvm $linear_1 = %layers.0.y_next {tile = 2, rows = 48, phases = 1, vectors = 1}  # 133 cycles, 2512.5 pJ
    1064: sync
    1222: adc %linear_1 = $linear_1 {tile = 2, n = 24}  # 1 cycle, 24.0 pJ
    1596: sync
    1596: mvm $linear_2 = %layers.1.y {tile = 1, rows = 24, phases = 1, vectors = 1}  # 133 cycles, 1256.2 pJ
    1729: adc %linear_2 = $linear_2 {tile = 1, n = 24}  # 1 cycle, 24.0 pJ
    1730: acc %add_35 = %linear_1, %linear_2 {n = 24, ops = 1}  # 1 cycle, 24.0 pJ
    1731: snu %layers.1.s_next, %layers.1.y_next = %add_35, %layers.1.s, %layers.1.y, @layers.1.decay, @layers.1.bias {g = "relu", h = "sigmoid", n = 24, ops = 7}  # 7 cycles, 168.0 pJ
    1995: mvm $linear_3_mm = %layers.1.y_next {tile = 3, rows = 24, phases = 1, vectors = 1}  # 133 cycles, 1256.2 pJ
    2128: sync
    2287: adc %linear_3_mm = $linear_3_mm {tile = 3, n = 10}  # 1 cycle, 10.0 pJ
    2288: acc %linear_3 = %linear_3_mm, @layers.2.linear.bias {n = 10, ops = 1}  # 1 cycle, 10.0 pJ
    2289: sigmoid %Y = %linear_3 {n = 10, ops = 1}  # 1 cycle, 10.0 pJ
    2290: send %Y -> gdu 0 {bytes = 40}  # 4 cycles, 40.0 pJ
    2660: sync
  }
}
