# chart.gp: events/s against producer threads, uvq's modes next to the two
# hand-written references, from the data file that `uvq-bench --dat FILE`
# writes (a header row of column names, then one row per producer count:
# for each pattern the median, min and max events/s over the runs).
#
# `make bench` runs it; by hand, from the build directory:
#   gnuplot -e "datafile='bench/throughput.dat'; \
#               outfile='docs/bench-throughput.png'" bench/chart.gp
if (!exists("datafile")) datafile = 'bench/throughput.dat'
if (!exists("outfile")) outfile = 'docs/bench-throughput.png'
if (!exists("subtitle")) subtitle = ''

npat = 6  # uvq-unbounded uvq-block uvq-drop uvq-poll ref-malloc ref-ring

set terminal pngcairo size 960,600 font "sans,11"
set output outfile
set title "uvq-bench: events per second by producer threads\n".\
          "(median of the runs; bars: min to max)".subtitle noenhanced
set xlabel "producer threads"
set ylabel "million events per second"
set logscale x 2
set xtics (1, 2, 4, 8, 16)
set xrange [0.8:10]
set yrange [0:*]
set grid ytics
set key outside right top Left reverse noenhanced
set datafile missing "NaN"
set style data yerrorlines

# uvq solid, references dashed.
set style line 1 lc rgb "#1b6ac9" lw 2 pt 7 ps 1.2 dt 1
set style line 2 lc rgb "#2a9d3a" lw 2 pt 5 ps 1.2 dt 1
set style line 3 lc rgb "#8e44ad" lw 2 pt 9 ps 1.2 dt 1
set style line 4 lc rgb "#17a2b8" lw 2 pt 11 ps 1.2 dt 1
set style line 5 lc rgb "#c0392b" lw 2 pt 4 ps 1.2 dt 2
set style line 6 lc rgb "#d68910" lw 2 pt 6 ps 1.2 dt 2

# Each pattern is nudged sideways a little so that the bars stay apart.
plot for [i=0:npat-1] datafile \
       using ($1*(1+0.03*(i-2.5))):(column(2+3*i)/1e6):(column(3+3*i)/1e6):(column(4+3*i)/1e6) \
       title columnheader(2+3*i) ls (i + 1)
