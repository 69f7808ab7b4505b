# A hash- and regex-heavy Perl workload for comparing perl on glibc's malloc
# and on magpie (tests/real_programs.rs). Deterministic: keys are sorted
# before printing and the PRNG is seeded.
use strict;
use warnings;

srand(4242);
my @syll = qw(ka lo mi nu pe ra si to vu wa xe yo zi);
sub word { my $n = 1 + int(rand(4)); join '', map { $syll[int(rand(@syll))] } 1 .. $n }

# Word counts and an inverted index.
my (%count, %index);
my @lines;
for my $i (1 .. 40000) {
    my @w = map { word() } 1 .. 1 + int(rand(12));
    my $line = join ' ', @w;
    push @lines, $line;
    for my $w (@w) {
        $count{$w}++;
        push @{ $index{substr($w, 0, 2)}{length $w} }, $i;
    }
}
my @top = (sort { $count{$b} <=> $count{$a} || $a cmp $b } keys %count)[0 .. 9];
print "distinct ", scalar(keys %count), "\n";
print "top ", join(',', map { "$_=$count{$_}" } @top), "\n";
for my $p (sort keys %index) {
    my $h = $index{$p};
    print "index $p ", join(' ', map { "$_:" . scalar(@{ $h->{$_} }) } sort { $a <=> $b } keys %$h), "\n";
}

# Regexes: captures, substitutions, global matches, split/join.
my ($matches, $subs, $caps) = (0, 0, 0);
my %pairs;
for my $line (@lines) {
    $matches++ if $line =~ /\b(?:ka|zi)\w*(?:to|wa)\b/;
    while ($line =~ /\b(\w)(\w*)\1\b/g) { $caps++; $pairs{$1}++ }
    (my $t = $line) =~ s/([aeiou])([a-z])/$2$1/g;
    $subs += ($t =~ tr/a-z//);
    my @f = split /\s+/, $t;
    $line = join '-', reverse @f;
}
print "regex $matches $caps $subs\n";
print "pairs ", join(',', map { "$_$pairs{$_}" } sort keys %pairs), "\n";
print "rewritten $lines[0] | $lines[-1]\n";

# Nested data structures, deletes and re-inserts.
my %db;
for my $i (1 .. 30000) {
    $db{"k$i"} = { id => $i, tags => [ map { "t" . ($i * $_ % 97) } 1 .. ($i % 5) ], name => word() };
}
delete $db{"k$_"} for grep { $_ % 3 == 0 } 1 .. 30000;
$db{"n$_"} = { id => -$_, tags => [], name => "new" } for 1 .. 5000;
my $sum = 0;
$sum += $_->{id} + @{ $_->{tags} } for values %db;
print "db ", scalar(keys %db), " $sum\n";

# String building and sprintf.
my $s = '';
$s .= sprintf("%05d:%x;", $_, $_ * $_ % 65521) for 1 .. 100000;
print "string ", length($s), " ", ($s =~ tr/;//), " ", substr($s, 123456, 20), "\n";
my @sorted = sort { $a <=> $b } map { ($_ * 7919) % 100003 } 1 .. 100000;
print "sorted $sorted[0] $sorted[50000] $sorted[-1]\n";
